"""Round-to-nearest (RTN) integer quantization of one weight matrix, as pure functions.

Each group of `group_size` consecutive input columns of a row (the whole row
with group_size 0) gets its own scale s (and, asymmetric, zero point z), and each
weight the nearest code q in [-2^(b-1), 2^(b-1) - 1]:

    symmetric:   s = 2 max|w| / (2^b - 1),                         q = clamp(round(w / s))
    asymmetric:  s = (max(w, 0) - min(w, 0)) / (2^b - 1),
                 z = clamp(round(-2^(b-1) - min(w, 0) / s)),        q = clamp(round(w / s) + z)
    W' = (q - z) * s                                                (z = 0 when symmetric)

These are the min-max grids compressed-tensors and GPTQ use. The scale is
rounded to its storage dtype (the weight's) before the codes are chosen, so W'
is exactly what a reader of the stored scale computes; a scale that is 0 (an
all-zero group, or one below the dtype's range) is stored as 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from htsr_cli.checkpoints.quantized.packing import chunks


@dataclass(frozen=True)
class RtnWeight:
    """One matrix quantized: codes [rows, cols] int8 (signed), scale [rows, groups] in the storage
    dtype, zero_point [rows, groups] int8 (asymmetric) or None."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    bits: int
    group_size: int  # 0: one group per row


def code_range(bits: int) -> tuple[int, int]:
    """The signed codes a `bits`-wide integer holds."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def rtn_quantize(
    weight: torch.Tensor, bits: int, group_size: int, symmetric: bool, scale_dtype: torch.dtype
) -> RtnWeight:
    """Quantize a [rows, cols] float matrix to `bits` (1..8), a chunk of rows at a time.

    group_size must divide cols (0: one group per row); 1-bit symmetric codes would
    be {-2 max|w|, 0}, so 1 bit needs `symmetric=False`.
    """
    rows, cols = weight.shape
    width = group_size or cols
    if not 1 <= bits <= 8 or cols % width:
        raise ValueError(f"bits {bits} (1..8) and group size {group_size} (dividing {cols}) do not fit")
    if bits == 1 and symmetric:
        raise ValueError("1-bit codes need an asymmetric grid")
    low_code, high_code = code_range(bits)
    codes = torch.empty(rows, cols, dtype=torch.int8)
    scale = torch.empty(rows, cols // width, dtype=scale_dtype)
    zero_point = None if symmetric else torch.empty(rows, cols // width, dtype=torch.int8)
    for r0, r1 in chunks(rows, cols):
        groups = weight[r0:r1].to(torch.float32).reshape(r1 - r0, cols // width, width)
        if symmetric:
            step = groups.abs().amax(-1) * (2.0 / ((1 << bits) - 1))
        else:
            low, high = groups.amin(-1).clamp(max=0.0), groups.amax(-1).clamp(min=0.0)
            step = (high - low) / ((1 << bits) - 1)
        stored = step.to(scale_dtype)
        stored = torch.where(stored == 0, torch.ones_like(stored), stored)
        step = stored.to(torch.float32)
        scaled = torch.round(groups / step[..., None])
        if not symmetric:
            zero = torch.round(low_code - low / step).clamp(low_code, high_code)
            scaled += zero[..., None]
            zero_point[r0:r1] = zero.to(torch.int8)
        codes[r0:r1] = scaled.clamp(low_code, high_code).reshape(r1 - r0, cols).to(torch.int8)
        scale[r0:r1] = stored
    return RtnWeight(codes, scale, zero_point, bits, group_size)


def rtn_dequantize(quantized: RtnWeight) -> torch.Tensor:
    """W' = (q - z) * s as float32 [rows, cols], a chunk of rows at a time."""
    rows, cols = quantized.codes.shape
    width = quantized.group_size or cols
    out = torch.empty(rows, cols, dtype=torch.float32)
    for r0, r1 in chunks(rows, cols):
        values = quantized.codes[r0:r1].to(torch.float32).reshape(r1 - r0, cols // width, width)
        if quantized.zero_point is not None:
            values -= quantized.zero_point[r0:r1].to(torch.float32)[..., None]
        values *= quantized.scale[r0:r1].to(torch.float32)[..., None]
        out[r0:r1] = values.reshape(r1 - r0, cols)
    return out


def rtn_error(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> float:
    """Squared Frobenius error ||W - W'||^2 of RTN at `bits` (scales kept in float32)."""
    quantized = rtn_quantize(weight, bits, group_size, symmetric, torch.float32)
    return float(((weight.to(torch.float32) - rtn_dequantize(quantized)) ** 2).sum(dtype=torch.float64))
