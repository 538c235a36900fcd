"""Bit-level helpers shared by the quantized formats: codes packed into int32
words, small float codebooks, and the row chunks that bound a decoder's scratch memory.

Every function is pure and works on any device, so a decoder runs where its
packed inputs are (the solver's GPU, or the CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

# Elements decoded per step: temporaries (int64 codes, gathered scales, about 36
# bytes an element) stay near 20 MB whatever the matrix size, so a decoder's peak
# is its float32 output plus its packed input.
CHUNK_ELEMENTS = 1 << 19

# fp4 e2m1 (sign, 2 exponent bits, 1 mantissa bit): code -> value, as OCP MX defines it.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def chunks(count: int, per_item: int, multiple: int = 1) -> Iterator[tuple[int, int]]:
    """[start, stop) ranges over `count` items of `per_item` elements each, about
    CHUNK_ELEMENTS elements per range, each a whole number of `multiple` items."""
    step = max(1, CHUNK_ELEMENTS // max(1, per_item * multiple)) * multiple
    for start in range(0, count, step):
        yield start, min(count, start + step)


def unpack_codes(words: torch.Tensor, bits: int, count: int, dim: int) -> torch.Tensor:
    """Unsigned `bits`-wide codes read from int32 words as one little-endian bit stream.

    words: [..., W, ...] int32 with W along `dim` -> [..., count, ...] int64.
    Code k occupies bits k*bits .. k*bits + bits - 1 of the stream (word w holds
    bits 32w .. 32w + 31, least significant first), so a code may straddle two
    words: GPTQ's 3-bit layout and compressed-tensors' dense packing are this
    stream, and 2/4/8-bit packing is its special case with no straddling.
    """
    moved = words.movedim(dim, 0)
    rest = moved.shape[1:]
    flat = moved.reshape(moved.shape[0], -1).to(torch.int64) & 0xFFFFFFFF  # [W, M], unsigned
    periods = math.ceil(count / 32)  # 32 codes fill exactly `bits` words
    needed = periods * bits + 1  # one spare word: the straddle read below never runs past the end
    if flat.shape[0] < needed:
        flat = F.pad(flat, (0, 0, 0, needed - flat.shape[0]))
    start_bits = torch.arange(32, device=words.device) * bits
    word = (torch.arange(periods, device=words.device)[:, None] * bits + start_bits // 32).reshape(-1)[:count]
    shift = (start_bits % 32).repeat(periods)[:count, None]  # [count, 1]
    codes = flat[word] >> shift  # [count, M]
    codes |= flat[word + 1] << (32 - shift)  # bits that straddle into the next word (masked away otherwise)
    codes &= (1 << bits) - 1
    return codes.reshape(count, *rest).movedim(0, dim)


def pack_codes(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """`unpack_codes`' inverse: unsigned `bits`-wide codes written into int32 words as one little-endian bit stream.

    codes: [..., count, ...] integers in [0, 2^bits) with count along `dim` ->
    [..., packed_words(count, bits), ...] int32. Code k fills bits k*bits .. k*bits + bits - 1
    of the stream; a code that straddles two words puts its high bits at the bottom of the next.
    """
    moved = codes.movedim(dim, 0)
    rest = moved.shape[1:]
    flat = moved.reshape(moved.shape[0], -1).to(torch.int64)  # [count, M]
    count = flat.shape[0]
    start = torch.arange(count, device=codes.device) * bits
    placed = flat << (start % 32)[:, None]  # below 2^40: no overflow in int64
    words = torch.zeros(packed_words(count, bits) + 1, flat.shape[1], dtype=torch.int64, device=codes.device)
    # Codes own disjoint bits, so adding them is OR-ing them.
    words.index_add_(0, start // 32, placed & 0xFFFFFFFF)
    words.index_add_(0, start // 32 + 1, placed >> 32)
    words = words[:-1]  # the spare word only ever receives zeros
    signed = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    return signed.reshape(signed.shape[0], *rest).movedim(0, dim)


def packed_words(count: int, bits: int) -> int:
    """int32 words that hold `count` codes of `bits` bits."""
    return math.ceil(count * bits / 32)


def grid_rows(
    grid: torch.Tensor,
    row0: int,
    rows: int,
    cols: int,
    row_step: int,
    col_step: int,
    row_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """The part of a scale (or zero-point) grid that covers rows row0 .. row0+rows-1 of a matrix.

    grid: [R, C], entry (i, j) covering rows i*row_step.. and columns j*col_step..
    (R = 1 or C = 1: one entry for every row or column); with `row_groups` [n]
    (GPTQ's g_idx), row r uses grid row row_groups[r] instead.
    -> [rows or 1, cols or 1], ready to broadcast against those rows.
    """
    part = grid
    if row_groups is not None:
        part = grid[row_groups[row0 : row0 + rows].long()]
    elif grid.shape[0] > 1:
        first = row0 // row_step
        part = grid[first : (row0 + rows - 1) // row_step + 1]
        if row_step > 1:
            part = part.repeat_interleave(row_step, dim=0).narrow(0, row0 - first * row_step, rows)
    if grid.shape[1] > 1 and col_step > 1:
        part = part.repeat_interleave(col_step, dim=1).narrow(1, 0, cols)
    return part


def dequantize_affine(
    codes_of: Callable[[int, int], torch.Tensor],
    shape: tuple[int, int],
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    row_step: int,
    col_step: int,
    *,
    row_groups: torch.Tensor | None = None,
    multiple: int = 1,
    transpose: bool = False,
) -> torch.Tensor:
    """(q - zero) * scale for a [rows, cols] matrix of codes q, decoded a chunk of rows at a time.

    codes_of(r0, r1): rows r0..r1-1 of q, [r1 - r0, cols] (float8, int or float);
    r0 and r1 are multiples of `multiple` (the packing's row period) except at the end.
    scale, zero: grids for `grid_rows` ([R, C] or anything holding R*C values, R
    = ceil(rows / row_step) or 1 with row_groups None, else one row per group).
    -> [rows, cols] float32, or its transpose [cols, rows] (contiguous) when `transpose`.
    """
    rows, cols = shape
    device = scale.device
    row_groups_count = 1 if scale.numel() == 1 else (
        scale.shape[0] if row_groups is not None else math.ceil(rows / row_step)
    )
    scale = scale.to(torch.float32).reshape(row_groups_count, -1)  # [R, C]
    if zero is not None:
        zero = zero.to(torch.float32).reshape(row_groups_count, -1)
    out = torch.empty((cols, rows) if transpose else (rows, cols), dtype=torch.float32, device=device)
    if row_groups is None and scale.shape[0] > 1:
        multiple = math.lcm(multiple, row_step)
    for r0, r1 in chunks(rows, cols, multiple):
        values = codes_of(r0, r1).to(torch.float32)  # [r, cols]
        if zero is not None:
            values -= grid_rows(zero, r0, r1 - r0, cols, row_step, col_step, row_groups)
        values *= grid_rows(scale, r0, r1 - r0, cols, row_step, col_step, row_groups)
        if transpose:
            out[:, r0:r1] = values.T
        else:
            out[r0:r1] = values
    return out
