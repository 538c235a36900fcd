"""The MD tree paper's evaluation: fit on part of one population, diagnose another (Zhou et al., ICML 2024, sec. 4).

Training rows always come from the basic collection (clean labels), test rows
are the whole noisy collection (10% label noise): a different population,
which is the "dataset transfer". What differs between cases is which basic
rows a method may learn from (YefanZhou/ModelDiagnosis, method/method_utils.py):

- `pairs`: k (data amount, width) pairs drawn at random, every batch size of each;
- `data_values`: k data amounts drawn at random, every width and batch size of each;
- `width_values`: k widths drawn at random, every data amount and batch size of each;
- `data_limit`: data amount <= k tenths of CIFAR-10 ("scale transfer": small to large);
- `width_limit`: width <= k ("scale transfer").

The random draws use NumPy's legacy generator seeded like the paper's
(`np.random.seed(seed); np.random.choice(...)`), so each seed picks the same
training rows as the paper's runs did. Rows labelled 'optimal' are dropped
from both sides; the data-vs-temperature question keeps width >= 32 only.

Methods: the MD tree (`md_tree`, or any threshold search given), and depth-4 CART trees (`fit_cart`) on the
validation metrics (train/test error and loss: "validation-based
diagnosis"), on the hyperparameters (log data amount and/or log parameter
count) and on the MD tree's own features.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from htsr_cli.diagnosis.fit import ThresholdSearch, every_split, fit_cart, fit_md_tree
from htsr_cli.diagnosis.questions import (
    DATA_VS_TEMPERATURE,
    NO_FAILURE,
    TEMPERATURE,
    WIDTH_VS_TEMPERATURE,
    Question,
    shape_features,
)
from htsr_cli.diagnosis.table import Population
from htsr_cli.diagnosis.tree import predict
from htsr_cli.errors import InvalidSetting

SEEDS = (42, 90, 38, 18, 72)  # the paper's
CART_DEPTH = 4  # the paper's baseline trees (method/baseline_dt.py)
VALIDATION_FEATURES = ("train_error", "train_loss", "test_loss", "test_error")
SAMPLINGS = ("pairs", "data_values", "width_values", "data_limit", "width_limit")
GRID = ("data", "width")
BASELINES = ("validation_dt", "hyperparameter_dt", "landscape_dt")


@dataclass(frozen=True)
class Case:
    name: str
    question: Question
    sampling: str
    k: int
    hyperparameters: tuple[str, ...]  # what the hyperparameter baseline may see
    paper: Mapping[str, float]  # accuracies (%) the paper reports (benchmark/README.md, Table B), by method

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise InvalidSetting("sampling", self.sampling, f"must be one of {', '.join(SAMPLINGS)}")


# Table B of the paper's benchmark (cases 1-5), and the data-vs-temperature task it has no table row for.
CASES = (
    Case("Q1 dataset transfer: 8 random (data, width) pairs", TEMPERATURE, "pairs", 8,
         ("log_data_amount", "log_para_amount"),
         {"hyperparameter_dt": 49.56, "validation_dt": 72.82, "md_tree": 87.70}),
    Case("Q1 scale transfer: data <= 5K images", TEMPERATURE, "data_limit", 1,
         ("log_data_amount", "log_para_amount"),
         {"hyperparameter_dt": 64.74, "validation_dt": 51.73, "md_tree": 75.89}),
    Case("Q1 scale transfer: width 2 (0.011M parameters)", TEMPERATURE, "width_limit", 2,
         ("log_data_amount", "log_para_amount"),
         {"hyperparameter_dt": 60.12, "validation_dt": 67.55, "md_tree": 82.56}),
    Case("Q2 width vs temperature, dataset transfer: 1 random data amount", WIDTH_VS_TEMPERATURE, "data_values", 1,
         ("log_data_amount",),
         {"hyperparameter_dt": 53.54, "validation_dt": 55.79, "md_tree": 74.10}),
    Case("Q2 width vs temperature, scale transfer: data <= 5K images", WIDTH_VS_TEMPERATURE, "data_limit", 1,
         ("log_data_amount",),
         {"hyperparameter_dt": 53.54, "validation_dt": 63.61, "md_tree": 78.16}),
    Case("Q2 data vs temperature, dataset transfer: 1 random width >= 32", DATA_VS_TEMPERATURE, "width_values", 1,
         ("log_para_amount",), {}),
)


@dataclass(frozen=True)
class Outcome:
    case: Case
    method: str
    accuracies: tuple[float, ...]  # on the test population, one per seed (one for a deterministic split)
    train_rows: tuple[int, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def spread(self) -> float:
        return float(np.std(self.accuracies))


@dataclass(frozen=True)
class Rows:
    """One question's rows of a population: the columns the methods read, and the class labels."""

    columns: Mapping[str, np.ndarray]
    labels: np.ndarray

    def take(self, keep: np.ndarray) -> Rows:
        return Rows({name: values[keep] for name, values in self.columns.items()}, self.labels[keep])


def question_rows(population: Population, question: Question, extra: tuple[str, ...] = ()) -> Rows:
    """The rows with a class label for `question` (and width >= its minimum), with the columns every method reads."""
    names = dict.fromkeys([*shape_features(question.shape), *VALIDATION_FEATURES, *GRID, *extra])
    columns = {name: population.numbers(name) for name in names}
    labels = population.labels(question.label_column, {*question.classes, NO_FAILURE})
    keep = (labels != NO_FAILURE) & (columns["width"] >= question.min_width)
    return Rows(columns, labels).take(keep)


def training_rows(rows: Rows, case: Case, seed: int) -> Rows:
    """The rows of the basic collection a method may learn from in `case` (drawn with `seed` when random)."""
    data = rows.columns["data"]
    width = rows.columns["width"]
    if case.sampling == "data_limit":
        return rows.take(data <= case.k)
    if case.sampling == "width_limit":
        return rows.take(width <= case.k)
    generator = np.random.RandomState(seed)  # the paper's np.random.seed(seed) + np.random.choice
    if case.sampling == "data_values":
        chosen = generator.choice(np.unique(data), size=case.k, replace=False)
        return rows.take(np.isin(data, chosen))
    if case.sampling == "width_values":
        chosen = generator.choice(np.unique(width), size=case.k, replace=False)
        return rows.take(np.isin(width, chosen))
    pairs = [(d, w) for d in np.unique(data) for w in np.unique(width)]
    picked = {pairs[index] for index in generator.choice(len(pairs), size=case.k, replace=False)}
    return rows.take(np.array([(d, w) in picked for d, w in zip(data, width)]))


def evaluate_case(
    case: Case,
    train: Population,
    test: Population,
    seeds: tuple[int, ...] = SEEDS,
    searches: Mapping[str, ThresholdSearch] | None = None,
) -> list[Outcome]:
    """Every method's test accuracy (%) on `test` after learning from `train`'s rows that `case` allows.

    `searches` names the MD tree fits to run (default: htsr's, as "md_tree"); the CART baselines follow.
    """
    searches = searches or {"md_tree": every_split}
    source = question_rows(train, case.question, case.hyperparameters)
    target = question_rows(test, case.question, case.hyperparameters)
    random = case.sampling in ("pairs", "data_values", "width_values")
    features = shape_features(case.question.shape)
    results: dict[str, list[float]] = {method: [] for method in [*searches, *BASELINES]}
    sizes = []
    for seed in seeds if random else seeds[:1]:
        rows = training_rows(source, case, seed)
        sizes.append(len(rows.labels))
        trees = {name: fit_md_tree(case.question, rows.columns, rows.labels, search) for name, search in searches.items()}
        trees["validation_dt"] = fit_cart(rows.columns, VALIDATION_FEATURES, rows.labels, CART_DEPTH)
        trees["hyperparameter_dt"] = fit_cart(rows.columns, case.hyperparameters, rows.labels, CART_DEPTH)
        trees["landscape_dt"] = fit_cart(rows.columns, features, rows.labels, CART_DEPTH)
        for method, tree in trees.items():
            results[method].append(100.0 * float(np.mean(predict(tree, target.columns) == target.labels)))
    return [Outcome(case, method, tuple(accuracies), tuple(sizes)) for method, accuracies in results.items()]
