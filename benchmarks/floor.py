"""The floor: the least work any tool must do to get every weight matrix's eigenvalues.

    python benchmarks/floor.py CHECKPOINT [--device cpu|cuda]

Imports torch and safetensors only, reads one weight at a time, forms the
short-side Gram matrix in float64 (conv kernels: all kh*kw slices in one
batch) and calls eigvalsh. No fit, no metrics, no report.
"""

from __future__ import annotations

import argparse

import torch

from weights import as_slices, weight_matrices


def gram_eigenvalues(weight: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[B, side] eigenvalues of each slice's short-side Gram matrix, formed and solved in `dtype`."""
    slices = as_slices(weight).to(device=device, dtype=dtype)  # [B, rows, cols]
    rows, cols = slices.shape[-2:]
    gram = slices.mT @ slices if rows >= cols else slices @ slices.mT  # [B, side, side]
    return torch.linalg.eigvalsh(gram)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    matrices = eigenvalues = 0
    for _, weight in weight_matrices(args.checkpoint):
        eigenvalues += gram_eigenvalues(weight, device).numel()
        matrices += 1
        del weight
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"{matrices} matrices, {eigenvalues} eigenvalues")


if __name__ == "__main__":
    main()
