"""How much of each matrix to prune: a ratio per matrix from an allocation, then whole weight counts.

Every allocation keeps the parameter-weighted mean sparsity over the pruned
matrices at the target, and all share AlphaPruning's scope (algorithms.md
section 7): the linear and conv matrices inside numbered blocks.

- uniform: every prunable matrix at the target.
- alphapruning: `sparsity_plan` on htsr's own analysis of the checkpoint.
- owl: per-block outlier ratios of calibration activations, mapped onto a band
  around the target (`owl_sparsities`).
- a saved `htsr.sparsity/1` file, checked against the checkpoint.

An entry is a `PruneEntry` dict (it goes straight into `htsr-prune.json`):
name, tensor, kind, block, params, the scores the allocation used,
`target_ratio` (None when the matrix is not pruned) and a `note` saying why not.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict, cast

from htsr_cli.allocations.sparsity import (
    PRUNABLE_KINDS,
    SCHEMA as SPARSITY_SCHEMA,
    excluded_note,
    has_blocks,
    model_ends,
    sparsity_plan,
)
from htsr_cli.checkpoints import TensorInfo
from htsr_cli.errors import HtsrError
from htsr_cli.io import read_json
from htsr_cli.spectra.matrices import describe
from htsr_cli.pruning.settings import PruneSettings
from htsr_cli.results.report import Report


class _PruneEntryRequired(TypedDict):
    name: str
    tensor: str
    kind: str
    block: str | None
    params: int
    score: float | None  # AlphaPruning's score of the matrix (its metric, scaled)
    outlier_ratio: float | None  # OWL: the block's outlier ratio
    target_ratio: float | None  # the sparsity allocated; None when the matrix is not pruned
    note: str | None  # why the matrix is not pruned; None when it is


class PruneEntry(_PruneEntryRequired, total=False):
    """One weight matrix of `htsr-prune.json`'s `layers`, in module order.

    An entry holds the allocation's metric under its own name: `alpha`, or
    `alpha_farms` with AlphaPruning's metric alpha_farms. The last four keys
    are added when the pruned checkpoint has been written.
    """

    alpha: float | None
    alpha_farms: float | None
    method: str | None  # "magnitude" or "wanda"; None when not pruned
    allocation: str | None  # the allocation's name or the plan file's path; None when not pruned
    pruned: int | None  # weights zeroed as planned
    achieved_ratio: float | None


def entry(name: str, tensor: str, kind: str, block: str | None, params: int, note: str | None) -> PruneEntry:
    return {
        "name": name, "tensor": tensor, "kind": kind, "block": block, "params": params,
        "alpha": None, "score": None, "outlier_ratio": None, "target_ratio": None, "note": note,
    }


def prunable(entries: Sequence[PruneEntry]) -> list[PruneEntry]:
    return [item for item in entries if item["note"] is None]


def scope_entries(infos: Sequence[TensorInfo], include_ends: bool = False) -> list[PruneEntry]:
    """One entry per weight matrix of the checkpoint (module order); those outside the scope get a note."""
    specs = [
        spec for info in infos if (spec := describe(info.key, info.shape, info.dtype, 0, info.storage_label))
    ]
    any_blocks = has_blocks(specs)
    ends = model_ends(specs)
    entries = []
    for index, spec in enumerate(specs):
        note = excluded_note(spec, ends.get(index), any_blocks, include_ends)
        if note is None and spec.skip_reason is not None:
            note = f"{spec.skip_reason}, not pruned"
        entries.append(entry(spec.name, spec.tensor, spec.kind, spec.block, spec.params, note))
    return entries


def require_prunable(entries: list[PruneEntry], source: str) -> list[PruneEntry]:
    if not prunable(entries):
        raise HtsrError(
            f"{source}: no prunable weight matrix (linear or conv, inside numbered blocks, not the first or "
            "last weight layer unless --include-ends)"
        )
    return entries


def uniform_allocation(entries: list[PruneEntry], target: float) -> list[PruneEntry]:
    for item in prunable(entries):
        item["target_ratio"] = target
    return entries


def alphapruning_allocation(report: Report, settings: PruneSettings) -> list[PruneEntry]:
    """AlphaPruning's ratios from the analysis, exactly as `htsr allocate sparsity` computes them."""
    assert settings.sparsity is not None  # the alphapruning allocation always has one
    metric = settings.sparsity.metric
    plan = sparsity_plan(report, settings.sparsity)
    entries = []
    for layer in plan["layers"]:
        item = entry(layer["name"], layer["tensor"], layer["kind"], layer["block"], layer["params"], layer["note"])
        # The metric's value under its own name, where `alpha` stands: alpha or alpha_farms.
        item = cast(PruneEntry, {metric if key == "alpha" else key: value for key, value in item.items()})
        item[metric] = layer[metric]
        item["score"] = layer["score"]
        item["target_ratio"] = layer["sparsity"]
        entries.append(item)
    for item in prunable(entries):
        if item["target_ratio"] >= 1.0:  # only reachable with --no-clip
            raise HtsrError(
                f"AlphaPruning gives {item['name']} a sparsity of {item['target_ratio']:.4f} (>= 1) without the cap; "
                "drop --no-clip or lower --epsilon or --target"
            )
    return entries


def owl_sparsities(ratios: Sequence[float], params: Sequence[int], target: float, lam: float) -> list[float]:
    """OWL's block sparsities from the blocks' outlier ratios D (more outliers -> pruned less).

        x_b = 2 lam (D_b - D_min) / (D_max - D_min)          (all 0 when every D is equal)
        s_b = target - (x_b - sum_b N_b x_b / sum_b N_b)     (N_b = the block's prunable parameters)

    so the sparsities span a band 2 lam wide whose parameter-weighted mean is the
    target. The reference centres on the plain mean over layers; for blocks of equal
    size (every decoder LLM) that is the same thing.
    """
    low, high = min(ratios), max(ratios)
    spread = [0.0 if high == low else 2.0 * lam * (d - low) / (high - low) for d in ratios]
    centre = math.fsum(n * x for n, x in zip(params, spread)) / sum(params)
    sparsities = [target - (x - centre) for x in spread]
    worst = min(sparsities) if min(sparsities) <= 0.0 else max(sparsities)
    if not 0.0 < worst < 1.0:
        raise HtsrError(
            f"OWL with --owl-lambda {lam} around --target {target} gives a block sparsity of {worst:.4f}, "
            "outside (0, 1); lower --owl-lambda"
        )
    return sparsities


def owl_allocation(
    entries: list[PruneEntry], block_ratios: dict[str, float], settings: PruneSettings
) -> list[PruneEntry]:
    """Set every prunable matrix to its block's OWL sparsity, given each block's outlier ratio."""
    assert settings.target is not None
    blocks = list(block_ratios)
    block_params = {block: 0 for block in blocks}
    for item in prunable(entries):
        block_params[item["block"]] += item["params"]
    sparsities = owl_sparsities(
        [block_ratios[b] for b in blocks], [block_params[b] for b in blocks], settings.target, settings.owl.lam
    )
    by_block = dict(zip(blocks, sparsities))
    for item in prunable(entries):
        item["outlier_ratio"] = block_ratios[item["block"]]
        item["target_ratio"] = by_block[item["block"]]
    return entries


def plan_file_allocation(
    path: Path, infos: Sequence[TensorInfo], target: float | None, include_ends: bool = False
) -> tuple[list[PruneEntry], float]:
    """The entries of a saved `htsr.sparsity/1` file, checked against the checkpoint; and its target.

    The target is the file's parameter-weighted mean sparsity; a `--target` given
    beside it must agree. Weight matrices the file does not list are not pruned.
    """
    if not os.path.lexists(path):
        raise HtsrError(f"--allocation {path}: no such file (expected alphapruning, uniform, owl or an htsr.sparsity/1 file)")
    document = read_json(path, f"--allocation {path}")  # a regular file, bounded in size and depth
    if not isinstance(document, dict) or document.get("schema") != SPARSITY_SCHEMA:
        raise HtsrError(f"--allocation {path}: not an {SPARSITY_SCHEMA} file (from `htsr allocate sparsity -f json`)")
    layers = document.get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise HtsrError(f"--allocation {path}: 'layers' must be a list of objects")
    stored = {info.key: info for info in infos}
    planned: dict[str, dict[str, Any]] = {}
    for index, layer in enumerate(layers):
        key, sparsity = layer.get("tensor"), layer.get("sparsity")
        if not isinstance(key, str):
            raise HtsrError(f"--allocation {path}: layers[{index}] has no 'tensor' name")
        if sparsity is None:
            continue
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
            raise HtsrError(f"--allocation {path}: {key!r} has sparsity {sparsity!r}, expected a number in [0, 1)")
        if key in planned:
            raise HtsrError(f"--allocation {path}: {key!r} is listed twice")
        if key not in stored:
            raise HtsrError(f"--allocation {path}: tensor {key!r} is not in the checkpoint (a plan for another model?)")
        planned[key] = layer
    if not planned:
        raise HtsrError(f"--allocation {path}: no layer has a sparsity")
    entries = []
    for item in scope_entries(infos, include_ends):
        layer = planned.get(item["tensor"])
        if layer is None:
            if item["note"] is None:
                item["note"] = "not in the allocation file, not pruned"
        else:
            _check_planned(path, item, layer, stored[item["tensor"]])
            item["note"] = None
            item["target_ratio"] = float(layer["sparsity"])
            for field in ("alpha", "score"):
                value = layer.get(field)
                item[field] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        entries.append(item)
    unknown = set(planned) - {item["tensor"] for item in entries}
    if unknown:
        key = sorted(unknown)[0]
        raise HtsrError(f"--allocation {path}: tensor {key!r} is not a weight matrix that can be pruned")
    chosen = prunable(entries)
    mean = math.fsum(item["target_ratio"] * item["params"] for item in chosen) / sum(item["params"] for item in chosen)
    if target is not None and abs(target - mean) > 1e-6:
        raise HtsrError(
            f"--target {target} disagrees with the allocation file's weighted mean sparsity {mean:.6f}; "
            "leave --target out to use the file's"
        )
    return entries, mean


def _check_planned(path: Path, item: PruneEntry, layer: dict[str, Any], info: TensorInfo) -> None:
    if item["kind"] not in PRUNABLE_KINDS or (item["note"] or "").startswith("quantized"):
        raise HtsrError(f"--allocation {path}: {item['tensor']!r} is a {item['kind']} {info.storage_label} tensor, which htsr does not prune")
    params = layer.get("params")
    if params is not None and params != item["params"]:
        raise HtsrError(
            f"--allocation {path}: {item['tensor']!r} has {params} parameters in the file but "
            f"{item['params']} in the checkpoint (a plan for another model?)"
        )


def exact_counts(ratios: Sequence[float], sizes: Sequence[int]) -> list[int]:
    """Weights to remove per matrix: each within one of ratio * size, summing to round(sum ratio * size).

    The ideal counts are floored and the weights still owed go, one each, to the
    matrices with the largest fractional parts (largest remainder, first on ties),
    so the global sparsity is exact to half a weight whatever the matrix sizes.
    """
    ideal = [ratio * size for ratio, size in zip(ratios, sizes)]
    counts = [math.floor(value) for value in ideal]
    owed = round(math.fsum(ideal)) - sum(counts)  # 0 <= owed <= len(counts): see the docstring
    by_remainder = sorted(range(len(ideal)), key=lambda i: (counts[i] - ideal[i], i))
    for index in by_remainder[:owed]:
        counts[index] += 1
    return counts
