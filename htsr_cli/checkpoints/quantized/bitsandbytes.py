"""bitsandbytes checkpoints as transformers saves them.

8-bit (LLM.int8): `weight` int8 [out, in] and `SCB` [out], the absolute maximum
of each row: W = weight * SCB / 127.

4-bit (NF4 / FP4, the QLoRA default): `weight` holds the codes of the flattened
matrix two per byte, the first in the high nibble ([n / 2, 1] uint8, or another
storage dtype viewed as bytes); W = quant_map[code] * absmax[block] over blocks
of `blocksize` consecutive elements. Beside it: `weight.absmax`,
`weight.quant_map` (the 16-value code book: NF4 or FP4, read from the file),
and `weight.quant_state.bitsandbytes__nf4` (or `__fp4`): JSON bytes in a uint8
tensor with the quant type, blocksize, dtype and logical shape. With nested
(double) quantization absmax itself is 8-bit: absmax = nested_quant_map[code]
* nested_absmax[block of nested_blocksize] + nested_offset.
"""

from __future__ import annotations

import json
import math
from functools import partial

import torch

from htsr_cli.checkpoints.base import TensorInfo
from htsr_cli.checkpoints.quantized.packed import PackedWeight, StoredTensors, unreadable
from htsr_cli.checkpoints.quantized.packing import chunks, dequantize_affine

QUANT_STATE = ".quant_state.bitsandbytes__"
QUANT_TYPES = ("nf4", "fp4")


def dequantize_int8(weight: torch.Tensor, row_absmax: torch.Tensor) -> torch.Tensor:
    """weight [out, in] int8, row_absmax (SCB) [out] -> W [out, in] float32."""
    rows, cols = weight.shape
    scale = row_absmax.to(torch.float32).reshape(rows, 1) / 127.0
    return dequantize_affine(lambda r0, r1: weight[r0:r1], (rows, cols), scale, None, 1, cols)


def nested_absmax(codes: torch.Tensor, absmax: torch.Tensor, code_book: torch.Tensor, blocksize: int, offset: float) -> torch.Tensor:
    """Double quantization: codes [B] uint8, absmax [ceil(B / blocksize)], code_book [256] -> [B] float32."""
    scale = absmax.to(torch.float32).repeat_interleave(blocksize)[: codes.numel()]
    return code_book.to(torch.float32)[codes.reshape(-1).long()] * scale + offset


def dequantize_4bit(
    packed: torch.Tensor, absmax: torch.Tensor, code_book: torch.Tensor, shape: tuple[int, ...], blocksize: int
) -> torch.Tensor:
    """packed: n/2 bytes (any shape, any storage dtype), absmax [ceil(n / blocksize)] float,
    code_book [16] -> W [*shape] float32, n = prod(shape)."""
    data = packed.reshape(-1)
    data = data if data.dtype == torch.uint8 else data.view(torch.uint8)
    count = math.prod(shape)
    absmax = absmax.to(torch.float32)
    code_book = code_book.to(torch.float32)
    out = torch.empty(count, dtype=torch.float32, device=packed.device)
    for e0, e1 in chunks(count, 1, multiple=2 * blocksize):
        pairs = data[e0 // 2 : (e1 + 1) // 2]
        codes = torch.stack((pairs >> 4, pairs & 0xF), dim=1).reshape(-1)[: e1 - e0]  # high nibble first
        scale = absmax[e0 // blocksize : math.ceil(e1 / blocksize)].repeat_interleave(blocksize)[: e1 - e0]
        torch.mul(code_book[codes.long()], scale, out=out[e0:e1])
    return out.reshape(shape)


def find_bitsandbytes(stored: StoredTensors) -> list[PackedWeight]:
    found = []
    states = {}
    for key in stored.infos:
        weight, marker, quant_type = key.partition(QUANT_STATE)
        if marker and weight in stored.infos:
            states[weight] = (key, quant_type)
    for key, (state_key, quant_type) in states.items():
        found.append(_four_bit(stored, key, state_key, quant_type))
    for key, info in stored.infos.items():
        prefix = key[: -len("weight")]
        if key.endswith("weight") and info.dtype == torch.int8 and prefix + "SCB" in stored.infos:
            found.append(_eight_bit(stored, key, prefix))
    return found


def _eight_bit(stored: StoredTensors, key: str, prefix: str) -> PackedWeight:
    shape = stored.infos[key].shape
    hidden = tuple(prefix + name for name in ("weight_format",) if prefix + name in stored.infos)
    if len(shape) != 2 or tuple(stored.infos[prefix + "SCB"].shape) != (shape[0],):
        reason = f"bnb int8 SCB {list(stored.infos[prefix + 'SCB'].shape)} is not one value per row of {list(shape)}"
        return unreadable(key, key, shape, "bnb int8", reason, (prefix + "SCB", *hidden))
    info = TensorInfo(key, shape, torch.float32, "bnb int8")
    return PackedWeight(info, key, {"weight": key, "SCB": prefix + "SCB"}, _decode_int8, hidden)


def _decode_int8(parts) -> torch.Tensor:
    return dequantize_int8(parts["weight"], parts["SCB"])


def _four_bit(stored: StoredTensors, key: str, state_key: str, quant_type: str) -> PackedWeight:
    names = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
    parts = {"weight": key, **{name: f"{key}.{name}" for name in names if f"{key}.{name}" in stored.infos}}
    companions = (*parts.values(), state_key)
    packed_shape = stored.infos[key].shape
    try:
        state = _quant_state(stored, state_key)
        shape, blocksize, nested = _checked_state(stored, parts, state, quant_type)
    except ValueError as error:
        return unreadable(key, key, packed_shape, f"bnb {quant_type}", f"bnb 4-bit {error}", companions)
    label = f"bnb {quant_type}" + (" double-quant" if nested else "")
    decode = partial(_decode_4bit, shape=shape, blocksize=blocksize, nested=nested)
    return PackedWeight(TensorInfo(key, shape, torch.float32, label), key, parts, decode, (state_key,))


def _quant_state(stored: StoredTensors, state_key: str) -> dict:
    raw = stored.read_small(state_key)
    try:
        state = json.loads(bytes(raw.reshape(-1).to(torch.uint8).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"quant_state is not JSON ({error})") from None
    if not isinstance(state, dict):
        raise ValueError("quant_state is not a JSON object")
    return state


def _checked_state(stored: StoredTensors, parts: dict, state: dict, quant_type: str):
    """(logical shape, blocksize, nested (blocksize, offset) or None), or ValueError naming what is wrong."""
    if quant_type not in QUANT_TYPES or state.get("quant_type") != quant_type:
        raise ValueError(f"quant_type {state.get('quant_type', quant_type)!r} is unknown (expected nf4 or fp4)")
    shape = state.get("shape")
    blocksize = state.get("blocksize")
    if not (isinstance(shape, list) and shape and all(isinstance(s, int) and s > 0 for s in shape)):
        raise ValueError(f"quant_state shape {shape!r} is not a list of positive sizes")
    if not (isinstance(blocksize, int) and blocksize > 0 and blocksize % 2 == 0):
        raise ValueError(f"quant_state blocksize {blocksize!r} is not a positive even number")
    count = math.prod(shape)
    info = stored.infos[parts["weight"]]
    stored_bytes = math.prod(info.shape) * torch.empty((), dtype=info.dtype).element_size()
    if stored_bytes != math.ceil(count / 2):
        raise ValueError(f"weight holds {stored_bytes} bytes, not the {math.ceil(count / 2)} that shape {shape} needs")
    for name, size in (("absmax", math.ceil(count / blocksize)), ("quant_map", 16)):
        if name not in parts or math.prod(stored.infos[parts[name]].shape) != size:
            raise ValueError(f"{name} is missing or does not hold {size} values")
    if "nested_absmax" not in parts:
        return tuple(shape), blocksize, None
    nested_blocksize = state.get("nested_blocksize")
    offset = state.get("nested_offset")
    if not (isinstance(nested_blocksize, int) and nested_blocksize > 0 and isinstance(offset, (int, float))):
        raise ValueError("nested quantization without a valid nested_blocksize and nested_offset")
    blocks = math.ceil(count / blocksize)
    if math.prod(stored.infos[parts["nested_absmax"]].shape) != math.ceil(blocks / nested_blocksize):
        raise ValueError("nested_absmax does not hold one value per nested block")
    if "nested_quant_map" not in parts or math.prod(stored.infos[parts["nested_quant_map"]].shape) != 256:
        raise ValueError("nested_quant_map is missing or does not hold 256 values")
    return tuple(shape), blocksize, (nested_blocksize, float(offset))


def _decode_4bit(parts, shape: tuple[int, ...], blocksize: int, nested: tuple[int, float] | None) -> torch.Tensor:
    absmax = parts["absmax"]
    if nested is not None:
        absmax = nested_absmax(absmax, parts["nested_absmax"], parts["nested_quant_map"], *nested)
    return dequantize_4bit(parts["weight"], absmax, parts["quant_map"], shape, blocksize)
