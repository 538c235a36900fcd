"""`htsr smooth` as a library call: WeightWatcher's SVD smoothing, written in the checkpoint's own layout.

    checkpoint -> per weight matrix: how many singular values to keep (percent or detX)
               -> its best low-rank approximation (conv: per kernel position)
               -> the same layout in OUT, one matrix in memory at a time

Which layers and how many singular values follow WeightWatcher 0.7.7's
`SVDSmoothing` (algorithms.md, "SVD smoothing"): linear, embedding and conv
weights with 8 to 15,000 eigenvalues and at most 50,000 rows (WeightWatcher's
layer filter); other tensors are copied as they are. The result is
OUT/htsr-smooth.json (`htsr.smooth/1`): per matrix the singular values kept and
the relative change ||W - W'|| / ||W||.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from htsr_cli import __version__
from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.io import write_atomic
from htsr_cli.pruning.layout import (
    Copies, files_record, open_rewritable, output_checks, plan_copies, rewrite_weights, source_directory, staged_output,
)
from htsr_cli.results.documents import dumps_json
from htsr_cli.settings import ProgressCallback
from htsr_cli.spectra.low_rank import best_rank_k, detx_count, per_slice, percent_count
from htsr_cli.spectra.matrices import MatrixSpec, as_slices, matrix_specs
from htsr_cli.spectra.solver import resolve_device

SCHEMA = "htsr.smooth/1"
RECORD = "htsr-smooth.json"
METHODS = ("percent", "detx")
SMOOTHED_KINDS = ("linear", "embedding", "conv1d", "conv2d")
# WeightWatcher 0.7.7's layer filter (its DEFAULT_PARAMS: min_evals, max_evals, max_N).
WW_MIN_EVALS = 8
WW_MAX_EVALS = 15_000
WW_MAX_N = 50_000


@dataclass(frozen=True)
class SmoothSettings:
    """How many singular values `htsr smooth` keeps: a fraction (`percent`) or by the detX condition (`detx`)."""

    method: str
    percent: float | None = None  # the fraction of each layer's singular values kept (method "percent")
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidSetting("method", self.method, f"must be one of {', '.join(METHODS)}")
        if self.method == "percent":
            if self.percent is None:
                raise InvalidSetting("percent", None, "is required with the percent method (the fraction of singular values kept)")
            if isinstance(self.percent, bool) or not 0.0 < self.percent < 1.0:  # also refuses NaN
                raise InvalidSetting("percent", self.percent, "must be a fraction strictly between 0 and 1")
        elif self.percent is not None:
            raise InvalidSetting("percent", self.percent, "is only used by the percent method (detx chooses the rank itself)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InvalidSetting("device", self.device, "must be one of auto, cpu, cuda")


def scope_note(spec: MatrixSpec) -> str | None:
    """Why WeightWatcher's SVDSmoothing leaves this weight as it is; None when it smooths it."""
    if spec.part is not None:
        return "fused expert tensor, not smoothed"
    if spec.kind not in SMOOTHED_KINDS:
        return f"{spec.kind}, not smoothed"
    if spec.skip_reason is not None:
        return f"{spec.skip_reason}, not smoothed"
    slices, rows, cols = spec.slice_grid
    if spec.num_evals < WW_MIN_EVALS:
        return f"{spec.num_evals} eigenvalues < {WW_MIN_EVALS}, not smoothed"
    if spec.num_evals > WW_MAX_EVALS:
        return f"{spec.num_evals} eigenvalues > {WW_MAX_EVALS}, not smoothed"
    if max(rows, cols) > WW_MAX_N:
        return f"{max(rows, cols)} rows > {WW_MAX_N}, not smoothed"
    return None


def smooth_slices(slices: torch.Tensor, settings: SmoothSettings) -> tuple[torch.Tensor, dict[str, int]]:
    """One layer's [B, rows, cols] slices smoothed (float64), and the counts behind it.

    The layer-wide count (percent of its M x B eigenvalues, or the detX tail of
    its pooled ESD) is spread over the B slices as ceil(count / B) each; a count
    of 0 leaves the layer as it is, as WeightWatcher does.
    """
    count_slices, rows, cols = slices.shape
    smaller = min(rows, cols)
    if settings.method == "percent":
        count = percent_count(settings.percent, smaller, count_slices)
    else:
        gram = slices.mT @ slices if rows >= cols else slices @ slices.mT
        count = detx_count(torch.linalg.eigvalsh(gram).clamp(min=0.0))
    keep = min(per_slice(count, count_slices), smaller)
    counts = {"count": count, "kept_per_slice": keep}
    if count == 0:
        return slices, counts
    return best_rank_k(slices, keep), counts


def smooth_checkpoint(
    source: str, output: str | Path, settings: SmoothSettings, progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """Smooth `source` (a weight file, a Hugging Face directory or a cached hub id) into the directory `output`.

    Raises `HtsrError` for a user's mistake before anything is written; on any
    failure or interruption `output` is left as it was.
    """
    output = Path(output)
    checkpoint = open_rewritable(source, "smooth", "smoothed")
    with closing(checkpoint):
        root = source_directory(source, checkpoint.paths)
        earlier = output_checks(output, [root or checkpoint.paths[0]], settings.overwrite, RECORD, SCHEMA)
        copies = plan_copies(root, checkpoint.paths, source) if root is not None else Copies([], [])
        device = resolve_device(settings.device)
        entries: dict[str, dict[str, Any]] = {}
        for info in checkpoint.tensors():
            for spec in matrix_specs(info.key, info.shape, info.dtype, 0, info.storage_label, unreadable=info.unreadable):
                entries.setdefault(spec.tensor, _entry(spec, scope_note(spec)))
        chosen = {key: entry for key, entry in entries.items() if entry["note"] is None}
        if not chosen:
            raise HtsrError(f"{source}: no weight matrix to smooth (linear, embedding or conv with 8 to 15,000 eigenvalues)")
        with staged_output(output, earlier) as staging:
            smoother = _smoother(chosen, settings, device, progress)
            for path in checkpoint.paths:
                rewrite_weights(path, staging / path.name, smoother)
            files = files_record(copies, staging, checkpoint.paths)
            document = _record(source, output, settings, device, list(entries.values()))
            document["files"] = files
            write_atomic(staging / RECORD, dumps_json(document))
    return document


def _entry(spec: MatrixSpec, note: str | None) -> dict[str, Any]:
    slices, rows, cols = spec.slice_grid
    return {
        "name": spec.name, "tensor": spec.tensor, "kind": spec.kind, "shape": list(spec.shape),
        "params": spec.params, "num_evals": spec.num_evals, "slices": slices,
        "count": None, "kept_per_slice": None, "relative_change": None, "note": note,
    }


def _smoother(chosen: dict[str, dict[str, Any]], settings: SmoothSettings, device: torch.device, progress):
    done = 0

    def smooth(key: str, load: Callable[[], torch.Tensor]) -> torch.Tensor | None:
        nonlocal done
        entry = chosen.get(key)
        if entry is None:
            return None
        if progress is not None:
            progress(done, len(chosen), entry["name"])
        stored = load()
        original = stored.to(device=device, dtype=torch.float64)
        if not torch.isfinite(original).all():
            raise HtsrError(f"{key}: has NaN or infinite weights; htsr cannot smooth them")
        slices = as_slices(original)
        smoothed, counts = smooth_slices(slices, settings)
        entry.update(counts)
        # back from [B, out, in] to the stored [out, in, *kernel]
        result = smoothed.permute(1, 2, 0).reshape(original.shape) if original.dim() > 2 else smoothed[0]
        norm = float(torch.linalg.vector_norm(original))
        entry["relative_change"] = float(torch.linalg.vector_norm(result - original)) / norm if norm > 0 else 0.0
        done += 1
        return result.to(dtype=stored.dtype, device="cpu").contiguous()

    return smooth


def _record(source: str, output: Path, settings: SmoothSettings, device: torch.device, entries: list[dict[str, Any]]) -> dict[str, Any]:
    smoothed = [entry for entry in entries if entry["note"] is None]
    changed = [entry for entry in smoothed if entry["count"]]
    return {
        "schema": SCHEMA,
        "htsr_version": __version__,
        "checkpoint": source,
        "output": str(output),
        "settings": {"method": settings.method, "percent": settings.percent, "device": device.type},
        "layers": entries,
        "summary": {
            "smoothed_matrices": len(changed),
            "unchanged": len(smoothed) - len(changed),
            "excluded": len(entries) - len(smoothed),
            "params": sum(entry["params"] for entry in changed),
            "max_relative_change": max((entry["relative_change"] for entry in changed), default=None),
        },
    }
