"""The sharpness-diversity picture of an ensemble (SharpBalance, Lu et al. 2024), as an
`htsr.ensemble/1` document: each member's adaptive worst-case sharpness, loss and accuracy on the
data, the ensemble's (mean predictive distribution) loss and accuracy, and the members' pairwise
diversity: disagreement, KL and prediction variance (definitions: landscape/sharpness.py and
docs/algorithms.md, "Loss-landscape metrics").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from htsr_cli import __version__
from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.landscape.measure import Subject
from htsr_cli.landscape.objective import Batches, Objective, ProgressCallback
from htsr_cli.landscape.sharpness import SharpnessSettings, adaptive_sharpness, ensemble_diversity

SCHEMA = "htsr.ensemble/1"


def check_same_classes(subjects: Sequence[Subject], objective: Objective, batches: Batches) -> None:
    """Members are averaged class by class: one line when their outputs have different widths."""
    inputs, _ = next(iter(batches))
    with torch.no_grad():
        widths = [int(objective.forward(subject.model.eval(), inputs).shape[-1]) for subject in subjects]
    if len(set(widths)) > 1:
        index = next(i for i, width in enumerate(widths) if width != widths[0])
        raise HtsrError(
            f"{subjects[0].name} and {subjects[index].name} predict different numbers of classes "
            f"({widths[0]} and {widths[index]}): an ensemble averages the same classes"
        )


def measure_ensemble(
    subjects: Sequence[Subject],
    objective: Objective,
    batches: Batches,
    sharpness: SharpnessSettings,
    data: dict[str, Any],
    device: str,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """The `htsr.ensemble/1` document of two or more models on the same batches."""
    if len(subjects) < 2:
        raise InvalidSetting("models", len(subjects), "an ensemble needs at least 2 models")
    check_same_classes(subjects, objective, batches)
    sharpnesses = [adaptive_sharpness(subject.model, batches, objective, sharpness, progress).sharpness for subject in subjects]
    diversity = ensemble_diversity([subject.model for subject in subjects], batches, objective, progress)
    others = len(subjects) - 1
    members = [
        {
            "model": subject.name,
            "parameters": sum(p.numel() for p in subject.model.parameters() if p.requires_grad),
            "loss": diversity.member_losses[index],
            "accuracy": 100.0 - diversity.member_errors[index],
            "sharpness": sharpnesses[index],
            # mean disagreement with the other members: the member's diversity in the paper's picture
            "disagreement": sum(diversity.pairwise_disagreement[index]) / others,
        }
        for index, subject in enumerate(subjects)
    ]
    return {
        "schema": SCHEMA,
        "htsr_version": __version__,
        "objective": objective.name,
        "data": data,
        "device": device,
        "settings": {"sharpness": asdict(sharpness)},
        "members": members,
        "ensemble": {
            "loss": diversity.ensemble_loss,
            "accuracy": 100.0 - diversity.ensemble_error,
            "mean_member_accuracy": sum(m["accuracy"] for m in members) / len(members),
            "mean_sharpness": sum(sharpnesses) / len(sharpnesses),
        },
        "diversity": {
            "disagreement": diversity.disagreement,
            "kl": diversity.kl,
            "variance": diversity.variance,
            "pairwise_disagreement": diversity.pairwise_disagreement,
            "pairwise_kl": diversity.pairwise_kl,
        },
    }
