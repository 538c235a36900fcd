"""A model too big for this machine on N ranks: an ESTIMATE from measured parts, never a measurement.

    from estimate import lpt_partition, distributed_estimate
    parts = lpt_partition([3.0, 2.0, 2.0, 1.0], ranks=2)     # [[0, 3], [1, 2]]
    result = distributed_estimate(layout, seconds_per_class, ranks=8, read_bytes_per_s=2e9, startup_s=6.0)

The model's matrices (keys and shapes from its architecture on the meta
device) each cost the time measured for one matrix of the same class, where a
class is (long side, short side): the Gram and the eigensolve cost the same
for a matrix and its transpose. The matrices are dealt to the ranks longest
first, each to the least-loaded rank (LPT: the rule issue 10 sets for htsr's
torchrun ranks, here on measured times instead of flop counts), and every rank pays the process start-up, its matrices' compute, and
reading its matrices' bytes at the measured bandwidth, with no credit for the
read overlapping the solve. The estimate is the slowest rank's total.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

Layout = list[tuple[str, tuple[int, ...]]]


def shape_class(shape: Sequence[int]) -> str:
    """'long x short' of a 2-D matrix: what its Gram + eigensolve cost depends on."""
    rows, cols = shape
    return f"{max(rows, cols)}x{min(rows, cols)}"


def lpt_partition(costs: Sequence[float], ranks: int) -> list[list[int]]:
    """Indices of `costs` per rank, longest first onto the least-loaded rank (ties: lower index, lower rank)."""
    if ranks < 1:
        raise ValueError(f"ranks must be at least 1, got {ranks}")
    loads = [(0.0, rank) for rank in range(ranks)]  # a heap of (load, rank)
    parts: list[list[int]] = [[] for _ in range(ranks)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(loads)
        parts[rank].append(index)
        heapq.heappush(loads, (load + costs[index], rank))
    return parts


def distributed_estimate(
    layout: Layout,
    seconds_per_class: dict[str, float],
    *,
    ranks: int,
    read_bytes_per_s: float,
    startup_s: float,
    bytes_per_value: int = 2,
) -> dict:
    """Per-rank compute and read seconds and the estimate (the slowest rank), for `layout` on `ranks`."""
    costs = [seconds_per_class[shape_class(shape)] for _, shape in layout]
    sizes = [bytes_per_value * math.prod(shape) for _, shape in layout]
    parts = lpt_partition(costs, ranks)
    compute = [sum(costs[index] for index in part) for part in parts]
    read = [sum(sizes[index] for index in part) / read_bytes_per_s for part in parts]
    totals = [startup_s + c + r for c, r in zip(compute, read)]
    return {
        "ranks": ranks,
        "matrices": len(layout),
        "bytes": sum(sizes),
        "startup_s": startup_s,
        "rank_compute_s": compute,
        "rank_read_s": read,
        "estimate_s": max(totals),
        "one_rank_s": startup_s + sum(costs) + sum(sizes) / read_bytes_per_s,
        # The slowest rank's compute over the mean: 1.0 is a perfect split.
        "imbalance": max(compute) / (sum(compute) / ranks) if sum(compute) > 0 else 1.0,
    }
