"""FARMS: alpha from fixed-aspect-ratio submatrices (algorithms.md section 5).

The bulk of an ESD depends on the matrix's aspect ratio, which biases alpha when
layers of different shapes are compared. FARMS fits alpha on the pooled
eigenvalues of many submatrices that all share one aspect ratio Q:

- linear / embedding: a deterministic grid of n_r x n_c overlapping w' x wc
  windows, every window's eigenvalues pooled, one fit;
- conv: each slice (oriented rows >= cols) cut into blocks down its long side,
  one fit per division pooled over the slices, alpha averaged over divisions.

Speed: window spectra come from Gram matrices and a batched symmetric
eigensolver, never from one SVD per window. Windows that share their rows (a
band) have Grams that are principal submatrices of the Gram of the band
restricted to their column union, so a group of neighbouring windows costs one
matmul instead of one per window. The group size and the Gram side are chosen
to minimise matmul flops within the solver's memory budget.

Precision follows the solver's: window Grams are formed like any Gram
(float32 from narrow weights in the default mode, lower triangle only) and in
`--precision float32` each pooled fit is guarded as the plain one is.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from htsr_cli.spectra.fit import PowerLawFit, guarded_fit
from htsr_cli.spectra.matrices import CONV_KINDS
from htsr_cli.settings import FarmsSettings
from htsr_cli.spectra.solver import GRAM_BUDGET_BYTES, Eigensolver

MIN_POOLED_EVALS = 5  # a layer whose FARMS pool is smaller is skipped


@dataclass(frozen=True)
class FarmsResult:
    alpha: float | None  # conv: mean over the divisions whose fit succeeded
    xmin: float | None
    ks_distance: float | None
    windows: int  # submatrices whose eigenvalues were pooled
    num_evals: int
    pooled: torch.Tensor  # sorted 1-D pooled ESD on the solver's device
    candidates: set[str]  # xmin candidate sets used by the fits: "exact" / "grid"
    redone: bool | None = None  # float32 mode: some pool was solved again in float64


@dataclass(frozen=True)
class WindowGrid:
    """Where the windows of a linear layer sit (all windows have the same shape)."""

    height: int  # w'
    width: int  # wc
    row_step: int
    col_step: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    @property
    def num_evals(self) -> int:
        return self.count * min(self.height, self.width)


@dataclass(frozen=True)
class ConvDivisions:
    """The blocks of a conv layer: `count` divisions of height x width per slice."""

    height: int  # h
    width: int  # c
    count: int  # rows // cols of the oriented slice


def _window_starts(length: int, size: int, steps: int) -> tuple[int, tuple[int, ...]]:
    step = max(1, (length - size) // (steps - 1))
    count = min(steps, max(1, (length - size) // step + 1))
    return step, tuple(min(i * step, length - size) for i in range(count))


def window_grid(rows: int, cols: int, settings: FarmsSettings) -> WindowGrid:
    """The published window geometry for a rows x cols matrix as stored."""
    height = min(settings.window, rows, cols)
    # int(w' * Q) exceeds cols when Q > 1 and w' is close to cols: a window cannot
    # be wider than the matrix, so the width is clamped to [1, cols].
    width = min(cols, max(1, int(height * settings.q)))
    row_step, row_starts = _window_starts(rows, height, settings.steps)
    col_step, col_starts = _window_starts(cols, width, settings.steps)
    return WindowGrid(height, width, row_step, col_step, row_starts, col_starts)


def conv_divisions(rows: int, cols: int, q: float) -> ConvDivisions:
    """Blocks of one conv slice of rows x cols as stored (used transposed when rows < cols)."""
    long_side, short_side = max(rows, cols), min(rows, cols)
    if q <= 1:
        height, width = short_side, max(1, int(short_side * q))
    else:
        height, width = max(1, int(short_side / q)), short_side
    return ConvDivisions(height, width, long_side // short_side)


def _oriented(grid: WindowGrid, transpose: bool) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    """(band height, Gram side, band starts, window starts along the Gram side)."""
    if transpose:
        return grid.width, grid.height, grid.col_starts, grid.row_starts
    return grid.height, grid.width, grid.row_starts, grid.col_starts


def _union_sizes(starts: tuple[int, ...], side: int, group: int) -> list[int]:
    """Width of each shared Gram when `group` neighbouring windows share one."""
    return [
        starts[min(lo + group, len(starts)) - 1] + side - starts[lo] for lo in range(0, len(starts), group)
    ]


def _gram_plan(grid: WindowGrid, budget_elements: int) -> tuple[bool, int, int]:
    """(transpose, group, batch) with the fewest matmul flops within the memory budget.

    transpose=False forms Grams over columns (W^T W) for groups of `group`
    neighbouring windows in a row band; True forms them over rows. A side is usable
    only when it is the window's short side, so each Gram has exactly
    min(height, width) eigenvalues. Memory: the group's shared Gram plus `batch`
    stacked window Grams and the eigensolver's copy of them.
    """
    options = []
    for transpose in (False, True):
        band, side, band_starts, starts = _oriented(grid, transpose)
        if side > band:
            continue
        window_elements = 2 * side * side
        for group in range(1, len(starts) + 1):
            unions = _union_sizes(starts, side, group)
            spare = budget_elements - max(unions) ** 2
            if group > 1 and spare < window_elements:
                break
            flops = len(band_starts) * band * sum(u * u for u in unions)
            options.append((flops, transpose, group, max(1, min(group, spare // window_elements))))
    _, transpose, group, batch = min(options)
    return transpose, group, batch


def window_spectra(
    matrix: torch.Tensor,
    grid: WindowGrid,
    solver: Eigensolver,
    budget_bytes: int = GRAM_BUDGET_BYTES,
    float64: bool = False,
) -> torch.Tensor:
    """Eigenvalues of every window's short-side Gram: [grid.count, min(height, width)], float64.

    `matrix` is [rows, cols] as stored, on the solver's device. Rows are
    ascending and clamped at 0; the row order of windows is not specified. No
    host synchronisation of its own. The plan is sized for float64 Grams in
    every precision, so the windows are grouped the same way in every mode.
    """
    transpose, group, batch = _gram_plan(grid, budget_bytes // 8)
    # Up to `parallel_solves` stacks wait on the eigensolvers while the next is formed:
    # smaller stacks keep them all within the plan's memory (a stack's size changes no number).
    batch = max(1, batch // (solver.parallel_solves + 1)) if solver.parallel_solves > 1 else batch
    band, side, band_starts, starts = _oriented(grid, transpose)
    if transpose:
        matrix = matrix.mT

    def window_grams() -> Iterator[torch.Tensor]:
        for top in band_starts:
            for lo in range(0, len(starts), group):
                shared = starts[lo : lo + group]
                block = matrix[top : top + band, shared[0] : shared[-1] + side]  # [band, union]
                # [union, union], lower triangle: each window's Gram is a diagonal block of it.
                gram = solver.column_gram(block)
                offsets = [start - shared[0] for start in shared]
                for at in range(0, len(offsets), batch):
                    yield torch.stack([gram[o : o + side, o : o + side] for o in offsets[at : at + batch]])
                del gram  # freed before the next group's Gram is allocated: one Gram alive at a time

    # The windows' eigensolves run on the CPU's spare cores while the next Grams are formed.
    return torch.cat(solver.eigenvalues_of_each(window_grams(), float64))


def _result(
    fits: list[PowerLawFit | None], windows: int, pooled: torch.Tensor, redone: list[bool | None]
) -> FarmsResult:
    """Combine the fits of a layer's divisions (one for linear layers) into its FARMS numbers."""
    done = [fit for fit in fits if fit is not None]

    def mean(values: list[float]) -> float | None:
        return statistics.fmean(values) if values else None

    return FarmsResult(
        alpha=mean([fit.alpha for fit in done]),
        xmin=mean([fit.xmin for fit in done]),
        ks_distance=mean([fit.ks_distance for fit in done]),
        windows=windows,
        num_evals=pooled.numel(),
        pooled=pooled,
        candidates={fit.candidates for fit in done},
        redone=None if None in redone else any(redone),
    )


def _linear_fit(matrix: torch.Tensor, settings: FarmsSettings, solver: Eigensolver, xmin: str) -> FarmsResult | None:
    grid = window_grid(*matrix.shape, settings)
    if grid.num_evals < MIN_POOLED_EVALS:
        return None

    def pooled_windows(float64: bool) -> torch.Tensor:
        return torch.sort(window_spectra(matrix, grid, solver, float64=float64).flatten()).values

    side = min(grid.height, grid.width)
    pooled, fit, redone = guarded_fit(pooled_windows, xmin, side, solver.precision.guarded)
    return _result([fit], grid.count, pooled, [redone])


def _conv_fit(
    slices: torch.Tensor, settings: FarmsSettings, solver: Eigensolver, xmin: str, scale: float
) -> FarmsResult | None:
    num_slices, rows, cols = slices.shape
    if rows < cols:
        slices = slices.mT
    blocks = conv_divisions(rows, cols, settings.q)
    if blocks.count * num_slices * min(blocks.height, blocks.width) < MIN_POOLED_EVALS:
        return None
    side = min(blocks.height, blocks.width)
    # Rows past count * height are ignored, as published (with Q > 1 about 1 - 1/Q of them).
    divisions = [
        guarded_fit(
            lambda float64, d=d: solver.pooled_eigenvalues(
                slices[:, d * blocks.height : (d + 1) * blocks.height, : blocks.width], scale, float64
            ),
            xmin,
            side,
            solver.precision.guarded,
        )
        for d in range(blocks.count)
    ]
    pooled = torch.sort(torch.cat([esd for esd, _, _ in divisions])).values
    return _result(
        [fit for _, fit, _ in divisions], blocks.count * num_slices, pooled, [redone for _, _, redone in divisions]
    )


def farms_fit(
    slices: torch.Tensor,
    kind: str,
    settings: FarmsSettings,
    solver: Eigensolver,
    xmin: str,
    conv_scale: float = 1.0,
) -> FarmsResult | None:
    """FARMS alpha of one layer; None when its pool would hold fewer than 5 eigenvalues.

    slices: [B, rows, cols] on the solver's device in their stored dtype (B = 1
    for linear/embedding, kh*kw for conv2d, k for conv1d). `conv_scale`
    multiplies conv eigenvalues as it does for the plain spectrum, so xmin_farms
    is in the same units as xmin.
    """
    if kind in CONV_KINDS:
        return _conv_fit(slices, settings, solver, xmin, conv_scale)
    return _linear_fit(slices[0], settings, solver, xmin)
