"""Which weights to zero: pure functions from a matrix (and activation norms) to a boolean mask.

- magnitude: the `count` entries of smallest |W| in the whole matrix.
- Wanda: score S_ij = |W_ij| * ||X_j||_2, the `count` smallest scores spread
  evenly over the output rows (Wanda's per-output comparison group).
- OWL's outlier ratio of a block: the share of Wanda scores above M times their mean.

Masks are True where a weight is removed. Ties are broken by position (lowest
index first) so every run prunes the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def magnitude_mask(weight: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` entries of `weight` (any shape) with the smallest absolute value."""
    magnitude = weight.detach().abs().flatten()
    if magnitude.dtype in (torch.float16, torch.bfloat16):
        magnitude = magnitude.float()  # exact: both widen to float32 without rounding
    mask = torch.zeros(magnitude.numel(), dtype=torch.bool, device=magnitude.device)
    if count > 0:
        # kthvalue is a selection, O(n), where a full sort of a 10^8-entry matrix is not.
        threshold = magnitude.kthvalue(count).values
        mask = magnitude < threshold
        ties = (magnitude == threshold).nonzero().flatten()
        mask[ties[: count - int(mask.sum())]] = True
    return mask.view(weight.shape)


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 for W as [out, in] and the L2 norm of each input feature over all tokens ([in])."""
    return weight.detach().abs().double() * input_norms.double().unsqueeze(0)


def row_balanced_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """`count` entries of smallest score in a [rows, cols] matrix, as evenly spread over rows as possible.

    Every row loses count // rows entries, its smallest (Wanda compares weights
    within an output row). The count % rows entries left over go to the rows
    whose next-smallest score is lowest, so the matrix loses exactly `count`.
    """
    rows, cols = scores.shape
    per_row, extra = divmod(count, rows)
    order = torch.sort(scores, dim=1, stable=True).indices  # [rows, cols], ascending per row
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, order[:, :per_row], True)
    if extra:
        next_index = order[:, per_row]  # [rows]: each row's cheapest weight still kept
        next_score = scores.gather(1, next_index.unsqueeze(1)).squeeze(1)
        chosen = torch.sort(next_score, stable=True).indices[:extra]
        mask[chosen, next_index[chosen]] = True
    return mask


def outlier_ratio(score_parts: Callable[[], Iterable[torch.Tensor]], multiple: float) -> float:
    """OWL's outlier ratio of a block, in percent: its scores above `multiple` times their mean.

    The block's score matrices are taken together (one mean over all of them);
    `score_parts` yields them one at a time, twice (once for the mean, once to
    count), so a whole block's scores never sit in memory at once.
    """
    total, count = 0.0, 0
    for scores in score_parts():
        total += float(scores.sum(dtype=torch.float64))
        count += scores.numel()
    threshold = multiple * total / count
    above = sum(int((scores > threshold).sum()) for scores in score_parts())
    return 100.0 * above / count
