"""`htsr prune` as a library call: allocate, choose the weights, write the checkpoint again.

    checkpoint -> allocation (a ratio per matrix) -> whole counts (exact global target)
               -> masks (magnitude, or Wanda on calibration activations) -> the same layout in OUT

The result is OUT/htsr-prune.json (`htsr.prune/1`): per matrix the target and
achieved ratios, the method, the allocation and the scores it used.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from htsr_cli import __version__
from htsr_cli.checkpoints import Checkpoint
from htsr_cli.checkpoints.safetensors_file import SafetensorsFile
from htsr_cli.errors import HtsrError
from htsr_cli.io import write_atomic
from htsr_cli.lm.language_models import model_directory, read_text
from htsr_cli.results.documents import dumps_json
from htsr_cli.pruning.sparsities import (
    PruneEntry,
    alphapruning_allocation,
    exact_counts,
    owl_allocation,
    plan_file_allocation,
    prunable,
    require_prunable,
    scope_entries,
    uniform_allocation,
)
from htsr_cli.pruning.calibration import HookedLinear, run_blocks
from htsr_cli.pruning.layout import (
    RECORD,
    SCHEMA,
    Copies,
    Pruner,
    files_record,
    open_rewritable,
    output_checks,
    plan_copies,
    rewrite_weights,
    source_directory,
    staged_output,
)
from htsr_cli.pruning.masks import magnitude_mask, outlier_ratio, row_balanced_mask, wanda_scores
from htsr_cli.pruning.settings import PruneSettings
from htsr_cli.settings import ProgressCallback
from htsr_cli.spectra.solver import resolve_device

SCHEMA = "htsr.prune/1"


def prune_checkpoint(
    source: str, output: str | Path, settings: PruneSettings, progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """Prune `source` (a weight file, a Hugging Face directory or a cached hub id) into the directory `output`.

    Raises `HtsrError` for a user's mistake before anything is written; on any
    failure or interruption `output` is left as it was.
    """
    output = Path(output)
    checkpoint = open_rewritable(source, "prune", "pruned")
    with closing(checkpoint):
        root = source_directory(source, checkpoint.paths)
        calibration = settings.calibration.text if settings.calibration is not None else None
        earlier = output_checks(output, [root or checkpoint.paths[0], settings.plan_file, calibration], settings.overwrite)
        copies = plan_copies(root, checkpoint.paths, source) if root is not None else Copies([], [])
        directory = None
        if settings.needs_calibration:
            read_text(settings.calibration.text, "--calibration", limit=4096)  # missing or empty: fail now
            directory = model_directory(source, "calibration")
        device = resolve_device(settings.device)
        entries, target = _allocate(source, checkpoint, settings, progress)
        with staged_output(output, earlier) as staging, tempfile.TemporaryDirectory(dir=staging, prefix=".scratch-") as scratch:
            if settings.allocation == "owl":
                ratios = _outlier_ratios(directory, source, checkpoint, entries, settings, device, progress)
                owl_allocation(entries, ratios, settings)
            chosen = prunable(entries)
            counts = dict(zip((item["tensor"] for item in chosen), exact_counts(
                [item["target_ratio"] for item in chosen], [item["params"] for item in chosen]
            )))
            if settings.method == "wanda":
                pruner = _wanda(directory, source, checkpoint, counts, settings, device, Path(scratch), progress)
            else:
                pruner = _magnitude(counts, device)
            zeros = {}
            for index, path in enumerate(checkpoint.paths):
                if progress is not None:
                    progress(index, len(checkpoint.paths), f"writing {path.name}")
                zeros.update(rewrite_weights(path, staging / path.name, pruner))
            files = files_record(copies, staging, checkpoint.paths)
            document = _record(source, output, settings, device, entries, target, counts, zeros)
            document["files"] = files
            write_atomic(staging / RECORD, dumps_json(document))
    return document


def _allocate(source: str, checkpoint: Checkpoint, settings: PruneSettings, progress) -> tuple[list[PruneEntry], float]:
    """The entries with their target ratios (OWL's come later, from calibration), and the global target."""
    if settings.plan_file is not None:
        return plan_file_allocation(settings.plan_file, checkpoint.tensors(), settings.target, settings.include_ends)
    assert settings.target is not None
    if settings.allocation == "alphapruning":
        from htsr_cli.engine.pipeline import analyze

        report = analyze(source, settings.analysis, progress=progress)
        return alphapruning_allocation(report, settings), settings.target
    entries = require_prunable(scope_entries(checkpoint.tensors(), settings.include_ends), source)
    if settings.allocation == "uniform":
        uniform_allocation(entries, settings.target)
    return entries, settings.target


def _outlier_ratios(
    directory, source, checkpoint, entries: list[PruneEntry], settings: PruneSettings, device, progress
) -> dict[str, float]:
    """OWL: each block's outlier ratio of Wanda scores, on the dense model's activations."""
    ratios: dict[str, float] = {}

    def visit(_index: int, name: str, linears: list[HookedLinear]) -> bool:
        def scores():
            return (wanda_scores(linear.weight, linear.input_norms) for linear in linears)

        ratios[name] = outlier_ratio(scores, settings.owl.m)
        return False

    keys = [item["tensor"] for item in prunable(entries)]
    run_blocks(directory, source, checkpoint, keys, settings.calibration, device, visit, _labelled(progress, "outliers"))
    return ratios


def _magnitude(counts: dict[str, int], device: torch.device) -> Pruner:
    def prune(key: str, load: Callable[[], torch.Tensor]) -> torch.Tensor | None:
        if key not in counts:
            return None
        stored = _finite(key, load())
        mask = magnitude_mask(stored.to(device), counts[key]).cpu()
        return stored.masked_fill(mask, 0)

    return prune


def _wanda(directory, source, checkpoint, counts, settings: PruneSettings, device, scratch: Path, progress) -> Pruner:
    """Prune block by block on calibration activations; the pruned tensors wait in `scratch` for the writer."""
    files: dict[str, Path] = {}

    def visit(index: int, _name: str, linears: list[HookedLinear]) -> bool:
        pruned = {}
        for linear in linears:
            _finite(linear.key, linear.weight)
            mask = row_balanced_mask(wanda_scores(linear.weight, linear.input_norms), counts[linear.key])
            linear.weight[mask] = 0  # the running block, so the next block sees pruned activations
            stored_mask = (mask.t() if linear.transposed else mask).cpu()
            pruned[linear.key] = checkpoint.load(linear.key).masked_fill(stored_mask, 0).contiguous()
        path = scratch / f"block-{index:05d}.safetensors"
        save_file(pruned, str(path))
        files.update(dict.fromkeys(pruned, path))
        return True

    run_blocks(directory, source, checkpoint, list(counts), settings.calibration, device, visit, _labelled(progress, "wanda"))

    def prune(key: str, _load: Callable[[], torch.Tensor]) -> torch.Tensor | None:
        if key not in files:
            return None
        with SafetensorsFile(files[key]) as handle:
            return handle.load(key)

    return prune


def _finite(key: str, weight: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(weight).all():
        raise HtsrError(f"{key}: has NaN or infinite weights; htsr cannot rank them for pruning")
    return weight


def _labelled(progress: ProgressCallback | None, stage: str) -> ProgressCallback | None:
    if progress is None:
        return None
    return lambda done, total, label: progress(done, total, f"{stage} {label}".strip())


def _record(
    source, output, settings: PruneSettings, device, entries: list[PruneEntry], target, counts, zeros
) -> dict[str, Any]:
    allocation = str(settings.plan_file) if settings.plan_file is not None else settings.allocation
    for item in entries:
        pruned = item["tensor"] in counts
        item["method"] = settings.method if pruned else None
        item["allocation"] = allocation if pruned else None
        item["pruned"] = counts.get(item["tensor"])
        item["achieved_ratio"] = zeros[item["tensor"]] / item["params"] if pruned else None
    chosen = prunable(entries)
    params = sum(item["params"] for item in chosen)
    removed = sum(zeros[item["tensor"]] for item in chosen)
    return {
        "schema": SCHEMA,
        "htsr_version": __version__,
        "checkpoint": source,
        "output": str(output),
        "settings": _settings_json(settings, device, target),
        "layers": entries,
        "summary": {
            "pruned_matrices": len(chosen),
            "excluded": len(entries) - len(chosen),
            "params": params,
            "zeros": removed,
            "target": target,
            "achieved": removed / params,
            "min_ratio": min(item["target_ratio"] for item in chosen),
            "max_ratio": max(item["target_ratio"] for item in chosen),
        },
    }


def _settings_json(settings: PruneSettings, device: torch.device, target: float) -> dict[str, Any]:
    result: dict[str, Any] = {
        "target": target,
        "allocation": str(settings.plan_file) if settings.plan_file is not None else settings.allocation,
        "method": settings.method,
        "device": device.type,
        "include_ends": settings.include_ends,
    }
    if settings.sparsity is not None:
        result["alphapruning"] = {
            "epsilon": settings.sparsity.epsilon,
            "granularity": settings.sparsity.granularity,
            "clip": settings.sparsity.clip,
            "metric": settings.sparsity.metric,
            "xmin": settings.analysis.xmin,
        }
    if settings.allocation == "owl":
        result["owl"] = {"m": settings.owl.m, "lambda": settings.owl.lam}
    if settings.calibration is not None and settings.needs_calibration:
        calibration = settings.calibration
        result["calibration"] = {"text": str(calibration.text), "samples": calibration.samples, "seq_len": calibration.seq_len}
    return result

