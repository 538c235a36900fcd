"""Diagnosis from loss-landscape features: the MD tree (Zhou et al., ICML 2024).

    from htsr_cli.diagnosis import diagnose_features
    diagnosis = diagnose_features({"train_error": 12.0, "mode_connectivity_peak": -40.0, "hessian_t": 5.1})
    for question, answer in diagnosis.answers:
        print(question.name, answer.label, answer.confidence)

`questions` holds what each question asks and the tree's fixed shape, `fit`
learns thresholds (and plain CART trees), `tree` walks a tree, `md_tree`
ships, saves and loads fitted trees, `table` reads a population CSV and
`evaluation` reproduces the paper's transfer protocols. No torch here.
"""

from htsr_cli.diagnosis.md_tree import (
    Diagnosis,
    FitSettings,
    MDTree,
    diagnose_features,
    fit_population,
    load_tree,
    shipped_tree,
)
from htsr_cli.diagnosis.questions import QUESTIONS, Question
from htsr_cli.diagnosis.table import Population, read_population

__all__ = [
    "QUESTIONS", "Diagnosis", "FitSettings", "MDTree", "Population", "Question",
    "diagnose_features", "fit_population", "load_tree", "read_population", "shipped_tree",
]
