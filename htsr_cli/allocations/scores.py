"""What the allocations read from a report: one score (alpha or alpha_farms) per
layer, block means of those scores, and the reason a layer has none."""

from __future__ import annotations

from collections.abc import Sequence

from htsr_cli.errors import InvalidSetting
from htsr_cli.results.report import OK, LayerResult

METRICS = ("alpha", "alpha_farms")


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise InvalidSetting("metric", metric, f"must be one of {', '.join(METRICS)}")


def score_of(layer: LayerResult, metric: str) -> float | None:
    return getattr(layer, metric)


def missing_score_note(layer: LayerResult, metric: str) -> str:
    """Why a layer has no score: its status and reason from the analysis."""
    if layer.status != OK:
        return f"no {metric}: {layer.status} ({layer.reason})"
    return f"no {metric}"


def block_means(blocks: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """Plain (unweighted) mean score of each block, blocks in order of first appearance."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for block, score in zip(blocks, scores):
        sums[block] = sums.get(block, 0.0) + score
        counts[block] = counts.get(block, 0) + 1
    return {block: sums[block] / counts[block] for block in sums}
