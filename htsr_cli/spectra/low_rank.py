"""Low-rank approximations of weight matrices, and how many singular values to keep (algorithms.md, SVD smoothing).

Pure tensor functions: `htsr smooth` (pruning/smoothing.py) decides per layer
how many singular values to keep and calls `best_rank_k` on the layer's slices.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from htsr_cli.spectra.random_matrix import detx


def detx_count(eigenvalues: torch.Tensor) -> int:
    """WeightWatcher's detX condition as a count of singular values to keep: detX_num of the ESD
    (`random_matrix.detx`: the first tail, from the largest eigenvalue down, whose product after
    rescaling to mean 1 drops below 1; every eigenvalue when none does; 0 for fewer than two or all
    equal)."""
    values = np.sort(eigenvalues.detach().to(torch.float64).flatten().cpu().numpy())
    return detx(values)[0]


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
