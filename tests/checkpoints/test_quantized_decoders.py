"""Dequantizers against independent element-by-element references, and quantize-dequantize round trips.

Each reference reads the documented layout one element at a time with Python
integers (no shared code with htsr), so a packing-order or offset mistake in
either shows up as a mismatch. The fixtures' packers are in fixtures/quantized.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.quantized import (
    AWQ_PACK_ORDER,
    E2M1,
    NF4,
    awq_parts,
    fp8_block_parts,
    gptq_parts,
    int8_parts,
    mxfp4_parts,
    nf4_parts,
    pack_stream,
)
from htsr_cli.checkpoints.quantized.bitsandbytes import dequantize_4bit, dequantize_int8, nested_absmax
from htsr_cli.checkpoints.quantized.fp8 import dequantize_fp8, scale_layout
from htsr_cli.checkpoints.quantized.gptq import dequantize_awq, dequantize_gptq
from htsr_cli.checkpoints.quantized.mxfp4 import dequantize_mxfp4
from htsr_cli.checkpoints.quantized.packing import unpack_codes


def weights(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


def stream_code(words: list[int], index: int, bits: int) -> int:
    """Code `index` of a little-endian bit stream of 32-bit words, by Python big-integer arithmetic."""
    stream = sum((word & 0xFFFFFFFF) << (32 * position) for position, word in enumerate(words))
    return (stream >> (index * bits)) & ((1 << bits) - 1)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 8),
    count=st.integers(1, 100),
    columns=st.integers(1, 3),
    data=st.data(),
)
def test_unpack_codes_reads_the_bit_stream(bits, count, columns, data):
    codes = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=count * columns, max_size=count * columns))
    codes = torch.tensor(codes, dtype=torch.int64).reshape(count, columns)
    words = pack_stream(codes, bits, dim=0)
    assert words.shape == (math.ceil(count * bits / 32), columns)
    for column in range(columns):
        column_words = words[:, column].tolist()
        assert [stream_code(column_words, k, bits) for k in range(count)] == codes[:, column].tolist()
    assert torch.equal(unpack_codes(words, bits, count, dim=0), codes)
    assert torch.equal(unpack_codes(words.T.contiguous(), bits, count, dim=1), codes.T)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("v2", [False, True])
def test_gptq_matches_an_element_by_element_reference(bits, act_order, v2):
    weight = weights(24, 128, seed=bits)
    parts = gptq_parts(weight, bits, group_size=32, act_order=act_order, symmetric=not v2, v2=v2)
    offset = 0 if v2 else 1
    decoded = dequantize_gptq(parts["qweight"], parts["qzeros"], parts["scales"], parts["g_idx"], bits, 32, offset)
    assert decoded.shape == (24, 128) and decoded.dtype == torch.float32
    qweight, qzeros = parts["qweight"].tolist(), parts["qzeros"].tolist()
    reference = torch.empty(24, 128)
    for j in range(24):  # output column
        column_words = [row[j] for row in qweight]
        for i in range(128):  # input row
            group = int(parts["g_idx"][i])
            zero = stream_code(qzeros[group], j, bits) + offset
            reference[j, i] = (stream_code(column_words, i, bits) - zero) * float(parts["scales"][group, j])
    assert torch.equal(decoded, reference)
    # Round trip: round-to-nearest errs by half a step; at the clipped end of the range the
    # fp16 rounding of the scale (2^-11 relative) is multiplied by up to 2^(bits-1) codes.
    step = parts["scales"].float()[parts["g_idx"].long()].T  # [out, in]
    assert ((decoded - weight).abs() <= step * (0.5 + 2 ** (bits - 1 - 11)) + 1e-7).all()


def test_gptq_without_g_idx_uses_consecutive_groups():
    weight = weights(16, 64)
    parts = gptq_parts(weight, 4, group_size=16, act_order=False, symmetric=True, v2=False)
    with_index = dequantize_gptq(parts["qweight"], parts["qzeros"], parts["scales"], parts["g_idx"], 4, 16, 1)
    without = dequantize_gptq(parts["qweight"], parts["qzeros"], parts["scales"], None, 4, 16, 1)
    assert torch.equal(with_index, without)


def test_awq_matches_an_element_by_element_reference():
    weight = weights(32, 64, seed=3)
    parts = awq_parts(weight, group_size=16)
    decoded = dequantize_awq(parts["qweight"], parts["qzeros"], parts["scales"], 16)
    slot_of_column = {column: slot for slot, column in enumerate(AWQ_PACK_ORDER)}
    reference = torch.empty(32, 64)
    for i in range(64):  # input row
        for j in range(32):  # output column: word j // 8, nibble slot by AWQ's order
            slot = slot_of_column[j % 8]
            code = (int(parts["qweight"][i, j // 8]) >> (4 * slot)) & 0xF
            zero = (int(parts["qzeros"][i // 16, j // 8]) >> (4 * slot)) & 0xF
            reference[j, i] = (code - zero) * float(parts["scales"][i // 16, j])
    assert torch.equal(decoded, reference)
    step = parts["scales"].float().repeat_interleave(16, 0).T  # asymmetric: no clipping, fp16 scales
    assert ((decoded - weight).abs() <= step * (0.5 + 2 ** (4 - 11)) + 1e-7).all()


def test_fp8_block_scales_and_round_trip():
    weight = weights(200, 300, seed=4)  # not multiples of 128: partial edge blocks
    parts = fp8_block_parts(weight)
    scale = parts["weight_scale_inv"]
    assert scale.shape == (2, 3)
    assert scale_layout((200, 300), tuple(scale.shape), (128, 128)) == (128, 128, "block 128x128")
    decoded = dequantize_fp8(parts["weight"], scale, 128, 128)
    assert torch.equal(decoded, _fp8_reference(parts["weight"], scale))
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 for normal numbers, absolute <= 2^-10 * scale below.
    stretched = scale.repeat_interleave(128, 0)[:200].repeat_interleave(128, 1)[:, :300]
    bound = torch.maximum(weight.abs() * 2**-4, stretched * 2**-10)
    assert ((decoded - weight).abs() <= bound * (1 + 1e-6)).all()


def _fp8_reference(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    values = weight.float().tolist()
    factors = scale.tolist()
    return torch.tensor(
        [[value * factors[i // 128][j // 128] for j, value in enumerate(row)] for i, row in enumerate(values)]
    )


@pytest.mark.parametrize(
    "scale_shape, expected",
    [((), (6, 10, "per-tensor")), ((6, 1), (1, 10, "per-channel")), ((6, 5), (1, 2, "group 2")), ((6, 7), None)],
)
def test_fp8_scale_layouts(scale_shape, expected):
    assert scale_layout((6, 10), scale_shape, None) == expected


@pytest.mark.parametrize("nested", [False, True])
def test_nf4_matches_an_element_by_element_reference(nested):
    weight = weights(256, 128, seed=5)  # 512 blocks of 64: two nested blocks of 256
    parts = nf4_parts(weight, blocksize=64, nested=nested)
    state = json.loads(bytes(parts[".quant_state.bitsandbytes__nf4"].tolist()))
    absmax = parts[".absmax"]
    if nested:
        absmax = nested_absmax(absmax, parts[".nested_absmax"], parts[".nested_quant_map"], 256, state["nested_offset"])
        reference_absmax = [
            float(parts[".nested_quant_map"][int(code)]) * float(parts[".nested_absmax"][index // 256]) + state["nested_offset"]
            for index, code in enumerate(parts[".absmax"])
        ]
        assert torch.allclose(absmax, torch.tensor(reference_absmax), rtol=1e-6, atol=0)
    decoded = dequantize_4bit(parts[""], absmax, parts[".quant_map"], (256, 128), 64)
    packed = parts[""].reshape(-1).tolist()
    flat = [NF4[(packed[k // 2] >> (4 if k % 2 == 0 else 0)) & 0xF] * float(absmax[k // 64]) for k in range(256 * 128)]
    assert torch.equal(decoded, torch.tensor(flat, dtype=torch.float32).reshape(256, 128))
    # An element errs by at most half of NF4's widest gap (-1 to -0.696) times its block's absmax.
    widest_gap = max(b - a for a, b in zip(NF4, NF4[1:]))
    block_max = weight.reshape(-1, 64).abs().amax(1).repeat_interleave(64).reshape(256, 128)
    slack = 0.0 if not nested else (absmax.repeat_interleave(64).reshape(256, 128) - block_max).abs()
    assert ((decoded - weight).abs() <= widest_gap / 2 * block_max + slack + 1e-6).all()


def test_nf4_reads_other_storage_dtypes_as_bytes():
    weight = weights(64, 64, seed=6)
    parts = nf4_parts(weight)
    as_bf16 = parts[""].reshape(-1).view(torch.bfloat16).reshape(-1, 1)  # quant_storage=bfloat16
    assert torch.equal(
        dequantize_4bit(as_bf16, parts[".absmax"], parts[".quant_map"], (64, 64), 64),
        dequantize_4bit(parts[""], parts[".absmax"], parts[".quant_map"], (64, 64), 64),
    )


def test_int8_rows():
    weight = weights(48, 40, seed=7)
    parts = int8_parts(weight)
    decoded = dequantize_int8(parts["weight"], parts["SCB"])
    reference = parts["weight"].float() * (parts["SCB"].float()[:, None] / 127.0)
    assert torch.equal(decoded, reference)
    assert ((decoded - weight).abs() <= parts["SCB"][:, None] / 127 / 2 * (1 + 1e-5)).all()


@pytest.mark.parametrize("experts", [None, 3])
def test_mxfp4_matches_an_element_by_element_reference(experts):
    rows, cols = 40, 96
    weight = weights(rows * (experts or 1), cols, seed=8).reshape(*((experts,) if experts else ()), rows, cols)
    blocks, scales = mxfp4_parts(weight)
    assert blocks.shape == (*weight.shape[:-1], 3, 16) and scales.shape == (*weight.shape[:-1], 3)
    decoded = dequantize_mxfp4(blocks, scales)
    flat_blocks, flat_scales = blocks.reshape(-1, 3, 16), scales.reshape(-1, 3)
    reference = torch.empty(flat_blocks.shape[0], cols)
    for r in range(flat_blocks.shape[0]):
        for c in range(cols):
            byte = int(flat_blocks[r, c // 32, (c % 32) // 2])
            code = (byte >> 4) if c % 2 else (byte & 0xF)
            reference[r, c] = E2M1[code] * 2.0 ** (int(flat_scales[r, c // 32]) - 127)
    if experts:
        # gpt-oss keeps fused experts as [E, in, out]: the decoder transposes each expert.
        assert decoded.shape == (experts, cols, rows)
        assert torch.equal(decoded, reference.reshape(experts, rows, cols).transpose(1, 2))
        decoded = decoded.transpose(1, 2)
    else:
        assert torch.equal(decoded, reference)
    # e2m1's widest gap (4 to 6) is 2 steps of the group's power of two: error <= 1 * 2^e.
    step = torch.pow(2.0, scales.float() - 127).repeat_interleave(32, -1)
    assert ((decoded - weight).abs() <= step).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decoders_give_the_same_matrix_on_cuda():
    """The pipeline decodes on the solver's device: every decoder must agree with its CPU run."""
    weight = weights(64, 256, seed=9)
    gptq = gptq_parts(weight, 3, 32, act_order=True, symmetric=True, v2=False)
    awq = awq_parts(weight, 32)
    fp8 = fp8_block_parts(weight)
    nf4 = nf4_parts(weight)
    blocks, scales = mxfp4_parts(weight)
    cases = [
        (lambda t: dequantize_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 3, 32, 1), gptq),
        (lambda t: dequantize_awq(t["qweight"], t["qzeros"], t["scales"], 32), awq),
        (lambda t: dequantize_fp8(t["weight"], t["weight_scale_inv"], 128, 128), fp8),
        (lambda t: dequantize_4bit(t[""], t[".absmax"], t[".quant_map"], (64, 256), 64), nf4),
        (lambda t: dequantize_mxfp4(t["blocks"], t["scales"]), {"blocks": blocks, "scales": scales}),
    ]
    for decode, parts in cases:
        on_cuda = decode({key: value.cuda() for key, value in parts.items()})
        assert on_cuda.device.type == "cuda"
        assert torch.equal(on_cuda.cpu(), decode(parts))
