"""AlphaPruning: layer-wise pruning sparsity from alpha (algorithms.md section 7).

Heavier-tailed layers (smaller alpha) are better trained and are pruned less;
the parameter-weighted mean sparsity is exactly the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from htsr_cli.allocations.scores import block_means, check_metric, missing_score_note, score_of
from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.results.report import LayerResult, Report

if TYPE_CHECKING:  # matrices imports torch; the allocate command must start without it
    from htsr_cli.spectra.matrices import MatrixSpec

SCHEMA = "htsr.sparsity/1"
GRANULARITIES = ("block", "matrix")
MAX_SPARSITY = 0.99  # htsr's clip; the reference does not clip
PRUNABLE_KINDS = ("linear", "conv1d", "conv2d")  # embeddings are never pruned
OVER_ONE_NOTE = "sparsity above 1 (--no-clip): cannot be applied as is"


@dataclass(frozen=True)
class SparsitySettings:
    target: float
    epsilon: float = 0.3
    granularity: str = "block"
    clip: bool = True
    metric: str = "alpha"  # or "alpha_farms"
    include_ends: bool = False  # also prune the first and last weight layer (stem and head)

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0:
            raise InvalidSetting("target", self.target, "must be a sparsity strictly between 0 and 1")
        if not 0.0 <= self.epsilon < 1.0:
            raise InvalidSetting("epsilon", self.epsilon, "must be in [0, 1)")
        if self.granularity not in GRANULARITIES:
            raise InvalidSetting("granularity", self.granularity, f"must be one of {', '.join(GRANULARITIES)}")
        check_metric(self.metric)
        if self.clip and self.target > MAX_SPARSITY:
            raise InvalidSetting(
                "target", self.target, f"is above the per-layer cap {MAX_SPARSITY}: lower it or turn clipping off"
            )


def sparsity_allocation(
    metrics: Sequence[float],
    params: Sequence[int],
    target: float,
    epsilon: float,
    clip: bool = True,
) -> tuple[list[float], int]:
    """Per-layer sparsities whose parameter-weighted mean is `target`, and how many were clipped.

    Min-max map of the metric m (alpha) onto ratios around 1:

        r_l = (1 - eps) + 2 eps (m_l - m_min) / (m_max - m_min)     (all r_l = 1 if m_max = m_min)
        p_l = r_l * s * sum_l N_l / sum_l (N_l r_l)                 (N_l = parameter count)

    so sum_l N_l p_l = s sum_l N_l. With `clip`, layers above MAX_SPARSITY are held
    at MAX_SPARSITY and the remaining (free) layers are rescaled to keep the weighted
    mean at s, repeating until no free layer exceeds the cap. No layer can fall below
    0: r_l >= 1 - eps > 0 and rescaling only raises the free layers.
    """
    if not metrics or len(metrics) != len(params):
        raise ValueError("need one parameter count per metric, and at least one layer")
    low, high = min(metrics), max(metrics)
    if high == low:
        ratios = [1.0] * len(metrics)
    else:
        ratios = [(1.0 - epsilon) + 2.0 * epsilon * (m - low) / (high - low) for m in metrics]
    budget = target * sum(params)  # parameters to remove
    scale = budget / sum(n * r for n, r in zip(params, ratios))
    sparsities = [r * scale for r in ratios]
    if not clip:
        return sparsities, 0
    if target > MAX_SPARSITY:
        raise HtsrError(f"target sparsity {target} cannot be met with every layer at most {MAX_SPARSITY}")
    capped = [False] * len(ratios)
    while True:
        over = [i for i, p in enumerate(sparsities) if not capped[i] and p > MAX_SPARSITY]
        if not over:
            break
        for i in over:
            capped[i] = True
        free = [i for i in range(len(ratios)) if not capped[i]]
        if not free:  # only when target == MAX_SPARSITY: every layer sits at the cap
            sparsities = [MAX_SPARSITY] * len(ratios)
            break
        left = budget - MAX_SPARSITY * sum(n for n, c in zip(params, capped) if c)
        scale = left / sum(params[i] * ratios[i] for i in free)
        sparsities = [MAX_SPARSITY if capped[i] else ratios[i] * scale for i in range(len(ratios))]
    return sparsities, sum(capped)


def has_blocks(layers: Sequence[LayerResult | MatrixSpec]) -> bool:
    return any(layer.block is not None for layer in layers if layer.kind in PRUNABLE_KINDS)


def model_ends(layers: Sequence[LayerResult | MatrixSpec]) -> dict[int, str]:
    """The stem and the head: {index: "first" | "last"} of the first and last weight layer (module order).

    An end layer that shares its numbered block with another weight matrix is
    not a stem or head but part of a repeated block, and is left out: a
    tied-embedding LM's last weight matrix is its last decoder layer's down_proj.
    """
    if not layers:
        return {}
    per_block: dict[str, int] = {}
    for layer in layers:
        if layer.block is not None:
            per_block[layer.block] = per_block.get(layer.block, 0) + 1
    ends = {}
    for index, end in ((0, "first"), (len(layers) - 1, "last")):
        block = layers[index].block
        if block is None or per_block[block] == 1:
            ends.setdefault(index, end)
    return ends


def excluded_note(layer: LayerResult | MatrixSpec, end: str | None, any_blocks: bool, include_ends: bool) -> str | None:
    """Why a layer is outside AlphaPruning's scope; None when it is prunable.

    The scope is the linear and conv matrices inside numbered blocks (decoder
    layers, residual blocks); a model with no numbered block at all (only
    reachable with `--granularity matrix`) has every matrix in scope. The first
    and last weight layers (`end`, from `model_ends`: the stem and the
    classifier) keep their weights, as TempBalance keeps their learning rate,
    unless `include_ends`. For an LLM they are the embeddings and the output
    head, which lie outside the decoder layers anyway.
    """
    if layer.kind not in PRUNABLE_KINDS:
        return f"{layer.kind}, not pruned"
    if any_blocks and layer.block is None:
        return "outside numbered blocks, not pruned"
    if end is not None and not include_ends:
        return f"{end} layer, not pruned (--include-ends prunes it)"
    return None


def sparsity_plan(report: Report, settings: SparsitySettings) -> dict[str, Any]:
    """The `htsr.sparsity/1` document: one entry per weight matrix of the report.

    Matrices outside the scope, and prunable ones with no alpha (skipped, failed
    or fit-failed), get `sparsity: null` and a `note`; they take no part in the
    allocation, so the target is met over the allocated matrices only.
    With `granularity="block"` each matrix's score is the plain (unweighted) mean
    alpha of its block's allocated matrices, as AlphaPruning averages per layer.
    """
    metric = settings.metric
    blocks = has_blocks(report.layers)
    ends = model_ends(report.layers)
    if settings.granularity == "block" and not blocks:
        raise InvalidSetting(
            "granularity", "block", f"no weight matrix of {report.checkpoint} lies in a numbered block "
            "(like model.layers.0), so there are no blocks to average over; use matrix"
        )
    entries: list[dict[str, Any]] = []
    allocated: list[dict[str, Any]] = []
    for index, layer in enumerate(report.layers):
        score = score_of(layer, metric)
        note = excluded_note(layer, ends.get(index), blocks, settings.include_ends)
        if note is None and score is None:
            note = missing_score_note(layer, metric)
        entry = {
            "name": layer.name,
            "tensor": layer.tensor,
            "kind": layer.kind,
            "block": layer.block,
            "params": layer.params,
            metric: score,
            "score": None,
            "sparsity": None,
            "note": note,
        }
        entries.append(entry)
        if note is None:
            allocated.append(entry)
    if not allocated:
        raise HtsrError(f"{report.checkpoint}: no prunable weight matrix has an {metric} to allocate from")

    scores = [entry[metric] for entry in allocated]
    if settings.granularity == "block":
        means = block_means([entry["block"] for entry in allocated], scores)
        scores = [means[entry["block"]] for entry in allocated]
    params = [entry["params"] for entry in allocated]
    sparsities, clipped = sparsity_allocation(scores, params, settings.target, settings.epsilon, settings.clip)
    for entry, score, sparsity in zip(allocated, scores, sparsities):
        entry["score"] = score
        entry["sparsity"] = sparsity
        if sparsity > 1.0:  # only without the clip: more weights to remove than the matrix has
            entry["note"] = OVER_ONE_NOTE

    total = sum(params)
    pruned = sum(n * p for n, p in zip(params, sparsities))
    return {
        "schema": SCHEMA,
        "htsr_version": report.htsr_version,
        "checkpoint": report.checkpoint,
        "settings": {
            "target": settings.target,
            "epsilon": settings.epsilon,
            "granularity": settings.granularity,
            "clip": settings.clip,
            "max_sparsity": MAX_SPARSITY if settings.clip else None,
            "metric": metric,
            "include_ends": settings.include_ends,
            "analysis": report.settings,
        },
        "layers": entries,
        "summary": {
            "allocated": len(allocated),
            "excluded": len(entries) - len(allocated),
            "allocated_params": total,
            "pruned_params": round(pruned),
            "weighted_mean": pruned / total,
            "min_sparsity": min(sparsities),
            "max_sparsity": max(sparsities),
            "clipped": clipped,
            "above_one": sum(1 for sparsity in sparsities if sparsity > 1.0),
        },
    }
