"""FARMS the published way: a Python loop of `torch.linalg.svdvals`, one window at a time.

    python benchmarks/farms_loop.py CHECKPOINT [--device cpu|cuda]

For every 2-D weight matrix, takes the same windows as htsr's FARMS
(algorithms.md section 5, w = 2000, k = 10, Q = 1), computes each window's
singular values in float64, squares them and pools them. It does not fit
alpha, so it does less work than `htsr analyze --farms` (which also fits and
computes the full-matrix spectrum): the comparison favours the loop. Conv
layers are skipped: the FARMS benchmarks run on transformer checkpoints.
"""

from __future__ import annotations

import argparse

import torch

from weights import weight_matrices

WINDOW = 2000
STEPS = 10
ASPECT_Q = 1.0


def window_starts(size: int, window: int, steps: int = STEPS) -> list[int]:
    """Start offsets of the windows along one dimension of length `size`."""
    step = max(1, (size - window) // (steps - 1))
    count = min(steps, max(1, (size - window) // step + 1))
    return [min(index * step, size - window) for index in range(count)]


def farms_windows(rows: int, cols: int) -> list[tuple[slice, slice]]:
    height = min(WINDOW, rows, cols)
    width = int(height * ASPECT_Q)
    return [
        (slice(top, top + height), slice(left, left + width))
        for top in window_starts(rows, height)
        for left in window_starts(cols, width)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    matrices = windows = 0
    for _, weight in weight_matrices(args.checkpoint):
        if weight.dim() != 2:
            continue
        weight = weight.to(device=device, dtype=torch.float64)
        pooled = []
        for row_window, col_window in farms_windows(*weight.shape):
            pooled.append(torch.linalg.svdvals(weight[row_window, col_window]) ** 2)
        torch.sort(torch.cat(pooled))
        matrices += 1
        windows += len(pooled)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"{matrices} matrices, {windows} windows")


if __name__ == "__main__":
    main()
