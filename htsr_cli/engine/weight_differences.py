"""How far a quantized (or otherwise changed) checkpoint's weights are from the
original's: ||W_B - W_A||_F / ||W_A||_F per layer, both checkpoints streamed one
matrix at a time through the solver's device (a packed weight is decoded there).

A GGUF file's llama-family q/k rows are permuted by llama.cpp's converter; they
are put back in the Hugging Face order before subtracting.
"""

from __future__ import annotations

import torch

from htsr_cli.checkpoints import Checkpoint, open_checkpoint
from htsr_cli.checkpoints.quantized.gguf_file import GgufCheckpoint
from htsr_cli.checkpoints.quantized.packing import chunks
from htsr_cli.spectra.solver import Eigensolver


def relative_error(reference: torch.Tensor, changed: torch.Tensor) -> float:
    """||changed - reference||_F / ||reference||_F, accumulated in float64 a chunk of rows at a time.

    reference, changed: the same shape, any float dtype, one device -> a float (inf for a zero reference
    that changed, 0 when both are zero).
    """
    rows = reference.shape[0]
    flat_a, flat_b = reference.reshape(rows, -1), changed.reshape(rows, -1)
    difference = norm = torch.zeros((), dtype=torch.float64, device=reference.device)
    for r0, r1 in chunks(rows, flat_a.shape[1]):
        a, b = flat_a[r0:r1].to(torch.float64), flat_b[r0:r1].to(torch.float64)
        difference = difference + (b - a).square().sum()
        norm = norm + a.square().sum()
    difference, norm = difference.sqrt().item(), norm.sqrt().item()
    if norm == 0.0:
        return 0.0 if difference == 0.0 else float("inf")
    return difference / norm


def _in_hf_order(checkpoint: Checkpoint, key: str, weight: torch.Tensor) -> torch.Tensor:
    return checkpoint.hf_row_order(key, weight) if isinstance(checkpoint, GgufCheckpoint) else weight


def weight_errors(
    source_a, source_b, pairs: list[tuple[str, str, str]], device: str = "auto"
) -> dict[str, float | None]:
    """{name: relative error of B's tensor against A's} for each (name, tensor in A, tensor in B).

    None where the two tensors differ in shape. Only one pair of matrices exists at a time.
    """
    solver = Eigensolver.create(device)
    errors: dict[str, float | None] = {}
    with open_checkpoint(source_a) as checkpoint_a, open_checkpoint(source_b) as checkpoint_b:
        for name, key_a, key_b in pairs:
            weight_a = _in_hf_order(checkpoint_a, key_a, checkpoint_a.load_for(key_a, solver.transfer))
            weight_b = _in_hf_order(checkpoint_b, key_b, checkpoint_b.load_for(key_b, solver.transfer))
            errors[name] = relative_error(weight_a, weight_b) if weight_a.shape == weight_b.shape else None
            del weight_a, weight_b
    return errors
