"""The naive baseline: what today's tools do.

    python benchmarks/naive.py CHECKPOINT

Loads the whole state dict into memory first, then takes the singular values
of every weight matrix one at a time in float64 (`torch.linalg.svdvals`, conv
kernels slice by slice) and squares them.
"""

from __future__ import annotations

import argparse

import torch

from weights import as_slices, is_matrix, load_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    args = parser.parse_args()
    state = load_everything(args.checkpoint)
    matrices = eigenvalues = 0
    for key, weight in state.items():
        if not is_matrix(key, tuple(weight.shape), weight.is_floating_point()):
            continue
        for matrix in as_slices(weight):
            eigenvalues += (torch.linalg.svdvals(matrix.double()) ** 2).numel()
        matrices += 1
    print(f"{matrices} matrices, {eigenvalues} eigenvalues")


if __name__ == "__main__":
    main()
