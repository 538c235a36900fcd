"""Per-layer deltas of a metric between two reports A and B (B - A), matched by layer name.

The layers both reports fitted come first, largest |delta| first; after them
the layers without a delta: a value missing on one side, then the layers only
in A, then only in B.

A GGUF file names its layers its own way (`blk.3.ffn_down`); when one side is
GGUF the other side's Hugging Face names are translated with the gguf
package's tensor name map for the file's architecture, so
`model.layers.3.mlp.down_proj` meets `blk.3.ffn_down`. With weights compared
(`htsr compare --weights`), each layer also carries the relative change of its
top eigenvalue and, from `weight_errors`, ||W_B - W_A||_F / ||W_A||_F.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from htsr_cli.errors import HtsrError
from htsr_cli.results.report import Report

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
    name: str  # A's name (B's for a layer only in B)
    before: float | None  # the metric in A
    after: float | None  # the metric in B
    status: str
    name_b: str | None = None  # B's name for the layer when it differs (a GGUF file's)
    relative_error: float | None = None  # ||W_B - W_A||_F / ||W_A||_F, with --weights
    lambda_max_change: float | None = None  # (lambda_max B - lambda_max A) / lambda_max A, with --weights

    @property
    def delta(self) -> float | None:
        return self.after - self.before if self.status == COMPARED else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "name_b": self.name_b, "before": self.before, "after": self.after,
            "delta": self.delta, "status": self.status,
            "relative_error": self.relative_error, "lambda_max_change": self.lambda_max_change,
        }


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    metric: str
    layers: tuple[LayerDelta, ...]
    settings_differences: tuple[str, ...]
    weights: bool = False  # whether the weights themselves were compared (--weights)

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
            **self._weight_summary(),
        }

    def _weight_summary(self) -> dict[str, Any]:
        errors = [layer for layer in self.layers if layer.relative_error is not None]
        worst = max(errors, key=lambda layer: layer.relative_error, default=None)
        return {
            "mean_relative_error": sum(l.relative_error for l in errors) / len(errors) if errors else None,
            "max_relative_error": {"name": worst.name, "relative_error": worst.relative_error} if worst else None,
        }

    def with_weight_errors(self, errors: dict[str, float | None]) -> Comparison:
        """This comparison with ||W_B - W_A||_F / ||W_A||_F per layer name (from `weight_errors`)."""
        layers = tuple(replace(layer, relative_error=errors.get(layer.name)) for layer in self.layers)
        return replace(self, layers=layers)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "weights": self.weights,
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


def gguf_names(gguf_report: Report, names: list[str]) -> dict[str, str]:
    """Hugging Face module names -> the GGUF names llama.cpp gives them in `gguf_report`'s architecture.

    Uses the gguf package's own tensor name map; names it does not know are left out.
    """
    try:
        import gguf
    except ImportError:
        return {}
    architecture = (gguf_report.checkpoint_format or {}).get("architecture")
    arch = next((key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == architecture), None)
    if arch is None:
        return {}
    blocks = 1 + max((int(part) for name in names for part in name.split(".") if part.isdigit()), default=0)
    name_map = gguf.get_tensor_name_map(arch, blocks)
    return {name: mapped for name in names if (mapped := name_map.get_name(name)) is not None}


def _is_gguf(report: Report) -> bool:
    return (report.checkpoint_format or {}).get("format") == "gguf"


def _relative_change(before: float | None, after: float | None) -> float | None:
    return (after - before) / before if before and after is not None else None


def compare_reports(a: Report, b: Report, metric: str = "alpha", weights: bool = False) -> Comparison:
    """Match layers by name and take B - A of `metric` for each.

    With `weights`, each layer also gets the relative change of its top eigenvalue
    (the relative weight error comes later, from `weight_errors`).
    """
    require_metric(a, metric, "A")
    require_metric(b, metric, "B")
    layers_a = {layer.name: layer for layer in a.layers}
    layers_b = {layer.name: layer for layer in b.layers}
    # B's name for each of A's layers: the same, or its GGUF name when exactly one side is GGUF.
    b_name = {name: name for name in layers_a}
    if _is_gguf(b) and not _is_gguf(a):
        b_name.update(gguf_names(b, list(layers_a)))
    elif _is_gguf(a) and not _is_gguf(b):
        b_name.update({gguf_name: hf for hf, gguf_name in gguf_names(a, list(layers_b)).items()})
    matched_b = {b_name[name] for name in layers_a if b_name[name] in layers_b}
    names = list(layers_a) + [name for name in layers_b if name not in matched_b and name not in layers_a]
    deltas = []
    for name in names:
        layer_a = layers_a.get(name)
        other = b_name.get(name, name) if layer_a is not None else name
        layer_b = layers_b.get(other)
        before = layer_a.metric(metric) if layer_a is not None else None
        after = layer_b.metric(metric) if layer_b is not None else None
        status = _status(layer_a is not None, layer_b is not None, before, after)
        change = None
        if weights and layer_a is not None and layer_b is not None:
            change = _relative_change(layer_a.lambda_max, layer_b.lambda_max)
        name_b = other if layer_a is not None and layer_b is not None and other != name else None
        deltas.append(LayerDelta(name, before, after, status, name_b, None, change))
    # sorted() is stable: equal |delta| (e.g. the unchanged layers' 0) keep A's module order.
    deltas = sorted(
        deltas,
        key=lambda d: (GROUP_ORDER.index(d.status), -abs(d.delta) if d.delta is not None else 0.0),
    )
    return Comparison(a.checkpoint, b.checkpoint, metric, tuple(deltas), tuple(settings_differences(a, b)), weights)

