"""Per-layer deltas of a metric between two reports A and B (B - A), matched by layer name.

The layers both reports fitted come first, largest |delta| first; after them
the layers without a delta: a value missing on one side, then the layers only
in A, then only in B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from htsr_cli.errors import HtsrError
from htsr_cli.report import Report

SCHEMA = "htsr.compare/1"
METRICS = ("alpha", "alpha_farms")
COMPARED_SETTINGS = ("xmin", "farms", "conv_scale", "precision")

# Why a layer has (or has no) delta; also the order of the groups in a comparison.
COMPARED = "compared"
NO_VALUE_A = "no value in A"
NO_VALUE_B = "no value in B"
NO_VALUE_EITHER = "no value in A or B"
ONLY_A = "only in A"
ONLY_B = "only in B"
GROUP_ORDER = (COMPARED, NO_VALUE_A, NO_VALUE_B, NO_VALUE_EITHER, ONLY_A, ONLY_B)


@dataclass(frozen=True)
class LayerDelta:
    name: str
    before: float | None  # the metric in A
    after: float | None  # the metric in B
    status: str

    @property
    def delta(self) -> float | None:
        return self.after - self.before if self.status == COMPARED else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "before": self.before, "after": self.after,
            "delta": self.delta, "status": self.status,
        }


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    metric: str
    layers: tuple[LayerDelta, ...]
    settings_differences: tuple[str, ...]

    @property
    def compared(self) -> list[LayerDelta]:
        return [layer for layer in self.layers if layer.status == COMPARED]

    def summary(self) -> dict[str, Any]:
        compared = self.compared
        count = len(compared)
        largest = compared[0] if compared else None  # sorted by |delta|
        return {
            "layers_compared": count,
            "mean_before": sum(l.before for l in compared) / count if count else None,
            "mean_after": sum(l.after for l in compared) / count if count else None,
            "mean_delta": sum(l.delta for l in compared) / count if count else None,
            "mean_abs_delta": sum(abs(l.delta) for l in compared) / count if count else None,
            "largest_change": largest.to_json() if largest else None,
            "without_value": sum(1 for l in self.layers if l.status in (NO_VALUE_A, NO_VALUE_B, NO_VALUE_EITHER)),
            "only_in_a": sum(1 for l in self.layers if l.status == ONLY_A),
            "only_in_b": sum(1 for l in self.layers if l.status == ONLY_B),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "settings_differences": list(self.settings_differences),
            "layers": [layer.to_json() for layer in self.layers],
            "summary": self.summary(),
        }


def require_metric(report: Report, metric: str, role: str) -> None:
    """alpha_farms exists only in reports analysed with --farms."""
    if metric == "alpha_farms" and not report.has_farms:
        raise HtsrError(
            f"{role} {report.checkpoint}: metric alpha_farms needs FARMS alphas; "
            "analyze with --farms (or use metric alpha)"
        )


def settings_differences(a: Report, b: Report) -> list[str]:
    """Analysis settings that differ between two reports: their alphas are then not comparable."""
    return [
        f"{key}: {a.settings.get(key)!r} vs {b.settings.get(key)!r}"
        for key in COMPARED_SETTINGS
        if a.settings.get(key) != b.settings.get(key)
    ]


def _status(in_a: bool, in_b: bool, before: float | None, after: float | None) -> str:
    if not in_b:
        return ONLY_A
    if not in_a:
        return ONLY_B
    if before is None and after is None:
        return NO_VALUE_EITHER
    if before is None:
        return NO_VALUE_A
    if after is None:
        return NO_VALUE_B
    return COMPARED


def compare_reports(a: Report, b: Report, metric: str = "alpha") -> Comparison:
    """Match layers by name and take B - A of `metric` for each."""
    require_metric(a, metric, "A")
    require_metric(b, metric, "B")
    layers_a = {layer.name: layer for layer in a.layers}
    layers_b = {layer.name: layer for layer in b.layers}
    names = list(layers_a) + [name for name in layers_b if name not in layers_a]
    deltas = []
    for name in names:
        before = layers_a[name].metric(metric) if name in layers_a else None
        after = layers_b[name].metric(metric) if name in layers_b else None
        deltas.append(LayerDelta(name, before, after, _status(name in layers_a, name in layers_b, before, after)))
    # sorted() is stable: equal |delta| (e.g. the unchanged layers' 0) keep A's module order.
    deltas = sorted(
        deltas,
        key=lambda d: (GROUP_ORDER.index(d.status), -abs(d.delta) if d.delta is not None else 0.0),
    )
    return Comparison(a.checkpoint, b.checkpoint, metric, tuple(deltas), tuple(settings_differences(a, b)))
