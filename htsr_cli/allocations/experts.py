"""AlphaLoRA: LoRA experts per transformer block from alpha (algorithms.md section 9).

Less-trained blocks (larger mean alpha) get more experts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from dataclasses import dataclass
from typing import Any

from htsr_cli.allocations.scores import block_means, check_metric, score_of
from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.results.report import Report
from htsr_cli.settings import require_int

SCHEMA = "htsr.experts/1"
EXPERTS_PER_BLOCK = 5  # default total = 5 x number of blocks
DEFAULT_BETA = 2.5
MAX_BETA = 100.0


@dataclass(frozen=True)
class ExpertSettings:
    total: int | None = None  # None: EXPERTS_PER_BLOCK per scored block
    beta: float = DEFAULT_BETA
    metric: str = "alpha"  # or "alpha_farms"

    def __post_init__(self) -> None:
        if self.total is not None:
            require_int(self.total, "total")
            if self.total < 1:
                raise InvalidSetting("total", self.total, "must be at least 1")
        if not -MAX_BETA <= self.beta <= MAX_BETA:  # also refuses NaN
            raise InvalidSetting(
                "beta", self.beta,
                f"must be a number in [-{MAX_BETA:g}, {MAX_BETA:g}] (at |beta| = {MAX_BETA:g} the largest score "
                "already takes nearly every expert)",
            )
        check_metric(self.metric)


def expert_allocation(scores: Sequence[float], total: int, beta: float = DEFAULT_BETA) -> list[int]:
    """Expert counts summing to exactly `total`, at least 1 each.

    Quotas q_l = T score_l^beta / sum score^beta; each layer gets floor(q_l), the
    units still missing go to the largest remainders (first on ties). A layer left
    at 0 is raised to 1, taking the unit from the layer most above its quota.

    The weights are formed in log space relative to the largest (so no power
    overflows or underflows to a zero sum, whatever beta), and the quotas,
    floors and remainders are exact rationals, so the counts sum to `total`
    exactly even for totals beyond float precision.
    """
    if total < len(scores):
        raise InvalidSetting(
            "total", total, f"is smaller than the number of blocks ({len(scores)}): every block needs at least one expert"
        )
    if not all(math.isfinite(score) and score > 0 for score in scores):
        raise HtsrError(f"expert scores must be positive finite numbers, got {list(scores)}")
    logs = [beta * math.log(score) for score in scores]
    top = max(logs)
    weights = [Fraction(math.exp(log - top)) for log in logs]  # largest is exactly 1
    quotas = [total * w / sum(weights) for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda i: counts[i] - quotas[i])  # stable sort
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i in range(len(counts)):
        if counts[i] == 0:
            donor = max((j for j in range(len(counts)) if counts[j] > 1), key=lambda j: counts[j] - quotas[j])
            counts[donor] -= 1
            counts[i] = 1
    return counts


def top_k(experts: int) -> int:
    return 2 if experts > 1 else 1


def expert_plan(report: Report, settings: ExpertSettings) -> dict[str, Any]:
    """The `htsr.experts/1` document: one entry per numbered block.

    A block's score is the plain mean alpha of its linear matrices (embeddings and
    convs excluded). A block none of whose linear matrices has an alpha gets
    `experts: null` and a note, and does not count towards the default total.
    """
    metric = settings.metric
    scored = [
        layer
        for layer in report.layers
        if layer.kind == "linear" and layer.block is not None and score_of(layer, metric) is not None
    ]
    blocks = list(dict.fromkeys(layer.block for layer in report.layers if layer.block is not None))
    if not blocks:
        raise HtsrError(
            f"{report.checkpoint}: no numbered blocks (like model.layers.0); "
            "AlphaLoRA allocates experts per transformer block"
        )
    means = block_means([layer.block for layer in scored], [score_of(layer, metric) for layer in scored])
    if not means:
        raise HtsrError(f"{report.checkpoint}: no linear matrix inside a block has an {metric}")
    total = settings.total if settings.total is not None else EXPERTS_PER_BLOCK * len(means)
    counts = dict(zip(means, expert_allocation(list(means.values()), total, settings.beta)))
    entries = []
    for block in blocks:
        experts = counts.get(block)
        entries.append(
            {
                "name": block,
                "matrices": sum(1 for layer in scored if layer.block == block),
                "score": means.get(block),
                "experts": experts,
                "top_k": top_k(experts) if experts is not None else None,
                "note": None if experts is not None else f"no linear matrix with an {metric}",
            }
        )
    return {
        "schema": SCHEMA,
        "htsr_version": report.htsr_version,
        "checkpoint": report.checkpoint,
        "settings": {"total": total, "beta": settings.beta, "metric": metric, "analysis": report.settings},
        "layers": entries,
        "summary": {"blocks": len(means), "experts": sum(counts.values())},
    }
