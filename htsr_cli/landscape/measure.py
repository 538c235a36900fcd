"""Every landscape metric of one or two models on one data source, as an `htsr.landscape/1` document.

Per model: mean loss and error on the data, Hessian top eigenvalues, trace and density, adaptive
sharpness. For two models (two seeds of one configuration, as the MD tree needs): mode connectivity,
CKA of their outputs and their diversity, and the MD tree's features in the dataset's units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from htsr_cli import __version__
from htsr_cli.errors import InvalidSetting
from htsr_cli.landscape.connectivity import ConnectivitySettings, check_same_architecture, connect
from htsr_cli.landscape.hessian import HessianOperator, HessianSettings, density, top_eigenvalues, trace
from htsr_cli.landscape.objective import Batches, Objective, ProgressCallback, mean_loss_and_error
from htsr_cli.landscape.sharpness import SharpnessSettings, adaptive_sharpness, ensemble_diversity
from htsr_cli.landscape.similarity import SimilaritySettings, model_cka

SCHEMA = "htsr.landscape/1"
PER_MODEL = ("hessian", "trace", "density", "sharpness")
PAIRED = ("connectivity", "cka", "diversity")
METRICS = PER_MODEL + PAIRED
DEFAULT_SINGLE = ("hessian", "trace", "sharpness")
DEFAULT_PAIR = DEFAULT_SINGLE + ("connectivity", "cka")


@dataclass(frozen=True)
class LandscapeSettings:
    metrics: tuple[str, ...] = DEFAULT_SINGLE
    hessian: HessianSettings = field(default_factory=HessianSettings)
    sharpness: SharpnessSettings = field(default_factory=SharpnessSettings)
    connectivity: ConnectivitySettings = field(default_factory=ConnectivitySettings)
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)

    def __post_init__(self) -> None:
        unknown = [metric for metric in self.metrics if metric not in METRICS]
        if unknown:
            raise InvalidSetting("metrics", ",".join(self.metrics), f"unknown {unknown[0]!r}; choose from {', '.join(METRICS)}")
        if not self.metrics:
            raise InvalidSetting("metrics", "", "name at least one metric")


@dataclass(frozen=True)
class Subject:
    """A model and the name the document gives it (its path or hub id)."""

    name: str
    model: nn.Module


def _log_or_none(value: float | None) -> float | None:
    return math.log(value) if value is not None and value > 0 else None


def measure(
    subjects: Sequence[Subject],
    objective: Objective,
    batches: Batches,
    settings: LandscapeSettings,
    data: dict[str, Any],
    device: str,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """The `htsr.landscape/1` document of one or two models on `batches`."""
    if not 1 <= len(subjects) <= 2:
        raise InvalidSetting("models", len(subjects), "give one model, or two of one architecture")
    paired = [metric for metric in settings.metrics if metric in PAIRED]
    if paired and len(subjects) != 2:
        raise InvalidSetting("metrics", ",".join(paired), "needs two models (e.g. two seeds of one configuration)")
    if len(subjects) == 2:
        check_same_architecture(subjects[0].model, subjects[1].model, (subjects[0].name, subjects[1].name))
    models = []
    for subject in subjects:
        loss, error = mean_loss_and_error(subject.model.eval(), batches, objective)
        entry: dict[str, Any] = {
            "model": subject.name,
            "parameters": sum(p.numel() for p in subject.model.parameters() if p.requires_grad),
            "loss": loss,
            "error": error,
            "hessian": None,
            "sharpness": None,
        }
        wants = [metric for metric in ("hessian", "trace", "density") if metric in settings.metrics]
        if wants:
            operator = HessianOperator(subject.model, objective, batches)
            hessian: dict[str, Any] = {"top_eigenvalues": None, "iterations": None, "trace": None, "trace_probes": None, "density": None}
            if "hessian" in wants:
                pairs = top_eigenvalues(operator, settings.hessian, progress)
                hessian["top_eigenvalues"], hessian["iterations"] = pairs.values, pairs.iterations
            if "trace" in wants:
                estimate = trace(operator, settings.hessian, progress)
                hessian["trace"], hessian["trace_probes"] = estimate.trace, len(estimate.probes)
            if "density" in wants:
                hessian["density"] = asdict(density(operator, settings.hessian, progress))
            hessian["products"] = operator.products
            entry["hessian"] = hessian
        if "sharpness" in settings.metrics:
            result = adaptive_sharpness(subject.model, batches, objective, settings.sharpness, progress)
            entry["sharpness"] = result.sharpness
        models.append(entry)
    pair: dict[str, Any] | None = None
    if len(subjects) == 2:
        first, second = subjects[0].model, subjects[1].model
        pair = {"connectivity": None, "cka": None, "diversity": None, "md_tree_features": None}
        if "connectivity" in settings.metrics:
            result = connect(first, second, batches, objective, settings.connectivity, progress)
            pair["connectivity"] = {
                "line": asdict(result.line),
                "bezier": asdict(result.bezier),
                "mode_connectivity": result.bezier.mode_connectivity,
                "mode_connectivity_peak": result.bezier.mode_connectivity_peak,
                "curve_steps": result.curve_steps,
                "batchnorm_recomputed": result.batchnorm_recomputed,
            }
        if "cka" in settings.metrics:
            pair["cka"] = model_cka(first, second, batches, settings.similarity, progress=progress)
        if "diversity" in settings.metrics:
            pair["diversity"] = asdict(ensemble_diversity([first, second], batches, objective, progress))
        pair["md_tree_features"] = md_tree_features(models, pair)
    return {
        "schema": SCHEMA,
        "htsr_version": __version__,
        "objective": objective.name,
        "data": data,
        "device": device,
        "settings": {
            "metrics": list(settings.metrics),
            "hessian": asdict(settings.hessian),
            "sharpness": asdict(settings.sharpness),
            "connectivity": asdict(settings.connectivity),
            "similarity": asdict(settings.similarity),
        },
        "models": models,
        "pair": pair,
    }


def md_tree_features(models: list[dict[str, Any]], pair: dict[str, Any]) -> dict[str, Any]:
    """The MD tree dataset's columns from two seeds, in its units: errors in percent, the logarithm
    of the seeds' mean top eigenvalue and mean trace (utils/data.py takes np.log of the mean)."""
    def mean_of(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type, misc]

    tops = [m["hessian"]["top_eigenvalues"][0] if m["hessian"] and m["hessian"]["top_eigenvalues"] else None for m in models]
    traces = [m["hessian"]["trace"] if m["hessian"] else None for m in models]
    connectivity = pair["connectivity"] or {}
    return {
        "train_error": mean_of([m["error"] for m in models]),
        "train_loss": mean_of([m["loss"] for m in models]),
        "hessian_e": _log_or_none(mean_of(tops)),
        "hessian_t": _log_or_none(mean_of(traces)),
        "mode_connectivity": connectivity.get("mode_connectivity"),
        "mode_connectivity_peak": connectivity.get("mode_connectivity_peak"),
        "CKA": pair["cka"],
    }
