"""TempBalance: layer-wise learning-rate factors from alpha (algorithms.md section 6).

Less-trained layers (larger alpha) get a larger learning rate. The same
`layer_factors` serves the exported schedule (`htsr lr-schedule export`) and the
live scheduler (`htsr_cli.allocations.tempbalance.TempBalance`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from htsr_cli.allocations.scores import block_means, check_metric, missing_score_note, score_of
from htsr_cli.errors import InvalidSetting
from htsr_cli.names import block_of
from htsr_cli.results.report import LayerResult, Report
from htsr_cli.settings import require_int

SCHEMA = "htsr.lr_schedule/1"
MAPS = ("linear", "sqrt", "log2", "step", "sigmoid")
UNITS = ("layer", "block")
SCHEDULES = ("cosine", "linear", "constant")
MAX_EPOCHS = 10_000  # bounds the exported file: modules x epochs learning rates
TB_MIN_EVALS = 50  # layers with fewer eigenvalues keep the base LR
SIGMOID_S_MIN = 2.0  # Model Balancing's scale below the mean score
SIGMOID_S_MAX = 1.0  # ... and above it
SIGMOID_SLOPE = 10.0


@dataclass(frozen=True)
class LrSettings:
    base_lr: float
    map: str = "linear"
    unit: str = "layer"
    min_ratio: float = 0.5
    max_ratio: float = 1.5
    metric: str = "alpha"  # or "alpha_farms"
    epochs: int | None = None
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if not 0 < self.base_lr < math.inf:
            raise InvalidSetting("base_lr", self.base_lr, "must be a positive finite number")
        if self.map not in MAPS:
            raise InvalidSetting("map", self.map, f"must be one of {', '.join(MAPS)}")
        if self.unit not in UNITS:
            raise InvalidSetting("unit", self.unit, f"must be one of {', '.join(UNITS)}")
        if not 0 < self.min_ratio <= self.max_ratio < math.inf:
            raise InvalidSetting(
                "min_ratio", self.min_ratio, f"must be positive and at most the max ratio ({self.max_ratio}), which is finite"
            )
        check_metric(self.metric)
        if self.epochs is not None:
            require_int(self.epochs, "epochs")
            if not 1 <= self.epochs <= MAX_EPOCHS:
                raise InvalidSetting(
                    "epochs", self.epochs, f"must be in [1, {MAX_EPOCHS}] (the file lists every module's "
                    "LR for every epoch; for per-step schedules, scale the per-epoch LRs in your training loop)",
                )
        if self.schedule not in SCHEDULES:
            raise InvalidSetting("schedule", self.schedule, f"must be one of {', '.join(SCHEDULES)}")


def tb_factors(alphas: Sequence[float], method: str, r_min: float = 0.5, r_max: float = 1.5) -> list[float]:
    """TempBalance's LR factor per layer (alphas of the eligible layers, in order).

    linear: r_min + (r_max - r_min) (a_l - a_min) / (a_max - a_min); all equal -> r_max
    sqrt:   n sqrt(a_l) / sum sqrt(a)
    log2:   n log2(a_l) / sum log2(a)
    step:   r_min + (r_max - r_min) rank_l / n, rank 0 for the smallest alpha (ties by order)
    """
    n = len(alphas)
    if n == 0:
        return []
    if method == "linear":
        low, high = min(alphas), max(alphas)
        if high == low:  # the reference's np.interp lands on the top of the range
            return [r_max] * n
        return [r_min + (r_max - r_min) * (a - low) / (high - low) for a in alphas]
    if method in ("sqrt", "log2"):
        transform = math.sqrt if method == "sqrt" else math.log2
        values = [transform(a) for a in alphas]
        total = sum(values)
        return [n * v / total for v in values]
    if method == "step":
        order = sorted(range(n), key=lambda i: alphas[i])  # stable: ties keep module order
        factors = [0.0] * n
        for rank, i in enumerate(order):
            factors[i] = r_min + (r_max - r_min) * rank / n
        return factors
    raise ValueError(f"unknown TempBalance map {method!r}")


def sigmoid_factors(
    scores: Sequence[float], s_min: float = SIGMOID_S_MIN, s_max: float = SIGMOID_S_MAX
) -> list[float]:
    """Model Balancing's map: factor = 10^f with d = score - mean(scores) and

    f = s_max (sigmoid(10 d) - 1/2) if d > 0, else s_min (sigmoid(10 d) - 1/2).
    """
    if not scores:
        return []
    mean = sum(scores) / len(scores)
    factors = []
    for score in scores:
        d = score - mean
        shifted = 1.0 / (1.0 + math.exp(-SIGMOID_SLOPE * d)) - 0.5
        factors.append(10.0 ** ((s_max if d > 0 else s_min) * shifted))
    return factors


def base_lr_at(base_lr: float, epoch: int, epochs: int, schedule: str) -> float:
    """eta(t) for epoch t in [0, T): cosine eta0 (1 + cos(pi t / T)) / 2, linear eta0 (1 - t / T), constant eta0."""
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "linear":
        return base_lr * (1.0 - epoch / epochs)
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown schedule {schedule!r}")


def bn_partner(name: str) -> str | None:
    """The conv whose factor a BatchNorm module takes: `layer1.0.bn1` -> `layer1.0.conv1`."""
    return name.replace("bn", "conv") if "bn" in name else None


@dataclass(frozen=True)
class LayerFactor:
    factor: float
    note: str | None  # why the factor is 1 (or whose factor a norm module follows)


def layer_factors(layers: Sequence[LayerResult], settings: LrSettings) -> dict[str, LayerFactor]:
    """The factor of every weight-matrix layer, by module name, layers in module order.

    The first and last layer (stem and classifier), layers with fewer than 50
    eigenvalues and layers without a score keep factor 1. With unit "block" the
    eligible layers are grouped by block (layers outside blocks keep 1) and each
    block's score is the plain mean of its layers' scores.
    """
    notes: dict[str, str | None] = {}
    eligible: list[LayerResult] = []
    for index, layer in enumerate(layers):
        note = None
        if index == 0:
            note = "first layer keeps the base LR"
        elif index == len(layers) - 1:
            note = "last layer keeps the base LR"
        elif score_of(layer, settings.metric) is None:
            note = missing_score_note(layer, settings.metric)
        elif layer.num_evals < TB_MIN_EVALS:
            note = f"{layer.num_evals} eigenvalues < {TB_MIN_EVALS}, keeps the base LR"
        elif settings.unit == "block" and layer.block is None:
            note = "outside numbered blocks, keeps the base LR"
        notes[layer.name] = note
        if note is None:
            eligible.append(layer)

    scores = [score_of(layer, settings.metric) for layer in eligible]
    units = [layer.name if settings.unit == "layer" else layer.block for layer in eligible]
    unit_scores = block_means(units, scores)
    if settings.map == "sigmoid":
        values = sigmoid_factors(list(unit_scores.values()))
    else:
        values = tb_factors(list(unit_scores.values()), settings.map, settings.min_ratio, settings.max_ratio)
    unit_factor = dict(zip(unit_scores, values))
    unit_of = dict(zip((layer.name for layer in eligible), units))
    return {
        name: LayerFactor(unit_factor[unit_of[name]] if note is None else 1.0, note)
        for name, note in notes.items()
    }


def modules_of(keys: Iterable[str]) -> list[str]:
    """Module paths that own the given state-dict keys, in order (`a.bn1.weight` -> `a.bn1`)."""
    return list(dict.fromkeys(key.rsplit(".", 1)[0] for key in keys if "." in key))


def with_norm_modules(factors: dict[str, LayerFactor], modules: Iterable[str]) -> dict[str, LayerFactor]:
    """Add the BatchNorm modules among `modules` that follow a conv with a factor, in module order."""
    out: dict[str, LayerFactor] = {}
    for name in modules:
        if name in factors:
            out[name] = factors[name]
            continue
        partner = bn_partner(name)
        if partner in factors:
            out[name] = LayerFactor(factors[partner].factor, f"follows {partner}")
    out.update((name, factor) for name, factor in factors.items() if name not in out)
    return out


def lr_schedule(report: Report, settings: LrSettings, modules: Sequence[str] = ()) -> dict[str, Any]:
    """The `htsr.lr_schedule/1` document: one entry per module with its factor and LR.

    `modules` are all parameter-owning module names of the checkpoint (see
    `modules_of`); BatchNorm modules among them get their conv's factor. With
    `epochs`, each entry also lists its LR per epoch, lrs[t] = factor * eta(t);
    the factors stay those of this checkpoint (TempBalance itself recomputes them
    every epoch: use the live scheduler for that).
    """
    factors = with_norm_modules(layer_factors(report.layers, settings), modules)
    etas = (
        [base_lr_at(settings.base_lr, t, settings.epochs, settings.schedule) for t in range(settings.epochs)]
        if settings.epochs
        else None
    )
    layers = {layer.name: layer for layer in report.layers}
    entries = []
    for name, layer_factor in factors.items():
        layer = layers.get(name)
        entry: dict[str, Any] = {
            "name": name,
            "kind": layer.kind if layer else "norm",
            "block": layer.block if layer else block_of(name),
            settings.metric: score_of(layer, settings.metric) if layer else None,
            "num_evals": layer.num_evals if layer else None,
            "factor": layer_factor.factor,
            "lr": layer_factor.factor * settings.base_lr,
        }
        if etas is not None:
            entry["lrs"] = [layer_factor.factor * eta for eta in etas]
        entry["note"] = layer_factor.note
        entries.append(entry)
    adjusted = [f.factor for f in factors.values() if f.note is None]
    return {
        "schema": SCHEMA,
        "htsr_version": report.htsr_version,
        "checkpoint": report.checkpoint,
        "settings": {
            "base_lr": settings.base_lr,
            "map": settings.map,
            "unit": settings.unit,
            "min_ratio": settings.min_ratio,
            "max_ratio": settings.max_ratio,
            "metric": settings.metric,
            "epochs": settings.epochs,
            "schedule": settings.schedule if settings.epochs else None,
            "factors": (
                "fixed: computed once from this checkpoint (TempBalance recomputes them "
                "every epoch; htsr_cli.allocations.TempBalance does that during training)"
            ),
            "analysis": report.settings,
        },
        "base_lrs": etas,
        "layers": entries,
        "summary": {
            "modules": len(entries),
            "adjusted": len(adjusted),
            "min_factor": min(adjusted, default=None),
            "max_factor": max(adjusted, default=None),
        },
    }
