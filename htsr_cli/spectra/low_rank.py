"""Low-rank approximations of weight matrices, and how many singular values to keep (algorithms.md, SVD smoothing).

Pure tensor functions: `htsr smooth` (pruning/smoothing.py) decides per layer
how many singular values to keep and calls `best_rank_k` on the layer's slices.
"""

from __future__ import annotations

import math

import torch


def detx_count(eigenvalues: torch.Tensor) -> int:
    """WeightWatcher's detX condition: the size of the tail whose product of eigenvalues first drops below 1.

    The eigenvalues are rescaled so that their mean is 1 (lambda * n / sum).
    Walking down from the largest, the tail lambda_i..lambda_max is grown one
    eigenvalue at a time; the count is the size of the first tail whose product
    is below 1 (the eigenvalue that tips it below is counted). When no tail
    drops below 1 the count is every eigenvalue. Fewer than two eigenvalues, or
    all equal, give 0. The product is taken as a sum of logs: the same decision,
    without overflow on thousands of eigenvalues.
    """
    values = torch.sort(eigenvalues.detach().to(torch.float64).flatten()).values
    count = values.numel()
    if count < 2 or not values[0] < values[-1]:
        return 0
    scaled = values * (count / values.sum())
    # log of the product of scaled[i:], for i = count-1 down to 1
    tail_logs = torch.cumsum(torch.log(scaled.flip(0)), dim=0)[: count - 1]
    below = torch.nonzero(tail_logs < 0.0)
    return int(below[0]) + 1 if below.numel() else count


def percent_count(percent: float, smaller_side: int, slices: int) -> int:
    """WeightWatcher's `percent` rule: int(percent * M * slices) singular values over the layer's pooled ESD."""
    return int(percent * smaller_side * slices)


def per_slice(count: int, slices: int) -> int:
    """A layer-wide count spread over a conv's kernel-position slices: ceil(count / slices) for each."""
    return math.ceil(count / slices)


def best_rank_k(matrices: torch.Tensor, keep: int) -> torch.Tensor:
    """The best rank-`keep` approximation of each matrix of a [B, rows, cols] stack (float64).

    Projects each matrix onto the top-`keep` eigenvectors of its Gram matrix on
    the smaller side (W^T W for tall, W W^T for wide), which are its top right
    (or left) singular vectors: W_k = W V_k V_k^T, or U_k U_k^T W. This equals
    the truncated SVD U_k S_k V_k^T and costs one eigendecomposition of the
    smaller side.
    """
    rows, cols = matrices.shape[-2:]
    if keep >= min(rows, cols):
        return matrices.clone()
    tall = rows >= cols
    gram = matrices.mT @ matrices if tall else matrices @ matrices.mT
    _, vectors = torch.linalg.eigh(gram)  # ascending: the top `keep` are the last columns
    top = vectors[..., -keep:] if keep > 0 else vectors[..., :0]
    projector = top @ top.mT
    return matrices @ projector if tall else projector @ matrices
