"""compressed-tensors integer formats (what llm-compressor writes; FP8 `float-quantized`
weights are read by fp8.py, the layout being the same weight + weight_scale).

- `pack-quantized`: `weight_packed` [out, ceil(in * bits / 32)] int32 holds each
  row's codes as one little-endian bit stream, each code the signed value plus
  2^(bits-1); `weight_shape` [2] is the logical shape; `weight_scale`; an
  asymmetric scheme adds `weight_zero_point`, packed the same way down the
  output rows ([ceil(out * bits / 32), groups]).
- `int-quantized` / `naive-quantized`: `weight` int8 [out, in], `weight_scale`,
  optional `weight_zero_point` int8.
W = (q - zero_point) * scale with the scale per tensor ([1]), per channel
([out, 1]) or per group of input columns ([out, in / group_size]).
"""

from __future__ import annotations

import math
import re
from functools import partial

import torch

from htsr_cli.checkpoints.base import TensorInfo
from htsr_cli.checkpoints.quantized.packed import ImpossibleParts, PackedWeight, StoredTensors, unreadable
from htsr_cli.checkpoints.quantized.packing import dequantize_affine, packed_words, unpack_codes

INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.uint8)


def dequantize_compressed(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    shape: tuple[int, int],
    bits: int | None,
    col_step: int,
) -> torch.Tensor:
    """-> W [out, in] float32.

    codes: weight_packed [out, ceil(in*bits/32)] int32 (bits given) or signed int codes [out, in] (bits None);
    scale: [1], [out, 1] or [out, G]; zero_point: like scale (unpacked) or, when packed,
    [ceil(out*bits/32), G] int32; col_step: input columns per scale column.
    """
    rows, cols = shape
    row_step = rows if scale.numel() == 1 else 1
    if bits is None:
        codes_of = lambda r0, r1: codes[r0:r1]  # noqa: E731
    else:
        offset = 1 << (bits - 1)  # packed codes are the signed values shifted to unsigned
        codes_of = lambda r0, r1: unpack_codes(codes[r0:r1], bits, cols, dim=1) - offset  # noqa: E731
        if zero_point is not None and scale.numel() > 1:  # a per-tensor zero point stays unpacked
            zero_point = unpack_codes(zero_point, bits, rows, dim=0) - offset  # [out, G]
    return dequantize_affine(codes_of, shape, scale, zero_point, row_step, col_step)


def weight_args(config, module: str) -> dict:
    """The `weights` arguments of the config group that targets `module` ({} without a config).

    A target is a module path ("model.layers.0.mlp.down_proj"), "re:" and a regex
    on the module path, or a module class name ("Linear"); a path or regex match
    wins, otherwise the first group naming a class applies (compressed-tensors'
    own matching: a target equal to the module name is that module).
    """
    groups = [group for group in (config.get("config_groups") or {}).values() if isinstance(group, dict)]
    by_class = None
    for group in groups:
        for target in group.get("targets") or ():
            if target == module:
                return group.get("weights") or {}
            if isinstance(target, str) and target.startswith("re:"):
                try:
                    if re.match(target[3:], module):
                        return group.get("weights") or {}
                except re.error:
                    continue
            elif by_class is None and not (isinstance(target, str) and "." in target):  # another module's path
                by_class = group.get("weights") or {}
    return by_class or {}


def _layout(shape: tuple[int, int], scale_shape: tuple[int, ...]) -> tuple[int, str] | None:
    """(input columns per scale column, strategy label) or None if the scale fits no layout."""
    rows, cols = shape
    if math.prod(scale_shape) == 1:
        return cols, "per-tensor"
    if tuple(scale_shape) in ((rows,), (rows, 1)):
        return cols, "per-channel"
    if len(scale_shape) == 2 and scale_shape[0] == rows and scale_shape[1] and cols % scale_shape[1] == 0:
        return cols // scale_shape[1], f"group {cols // scale_shape[1]}"
    return None


def find_compressed(stored: StoredTensors) -> list[PackedWeight]:
    found = []
    fmt = str(stored.config.get("format", ""))
    for key, info in stored.infos.items():
        if key.endswith("weight_packed") and info.dtype == torch.int32:
            prefix = key[: -len("weight_packed")]
            found.append(_packed_weight(stored, prefix, key, fmt or "pack-quantized"))
        elif key.endswith("weight") and info.dtype in INT_DTYPES and key + "_scale" in stored.infos:
            found.append(_int_weight(stored, key, key[: -len("weight")], fmt or "int-quantized"))
    return found


def _parts(stored: StoredTensors, prefix: str, roles: tuple[str, ...]) -> dict[str, str]:
    return {role: prefix + role for role in roles if prefix + role in stored.infos}


def _packed_weight(stored: StoredTensors, prefix: str, main: str, fmt: str) -> PackedWeight:
    logical = prefix + "weight"
    parts = _parts(stored, prefix, ("weight_packed", "weight_scale", "weight_zero_point"))
    extra = _parts(stored, prefix, ("weight_shape", "weight_g_idx")).values()
    packed_shape = stored.infos[main].shape
    label = f"compressed-tensors {fmt}"
    if "weight_shape" not in _parts(stored, prefix, ("weight_shape",)) or "weight_scale" not in parts:
        reason = "compressed-tensors weight_packed without weight_shape or weight_scale"
        return unreadable(logical, main, packed_shape, label, reason, [*parts.values(), *extra])
    shape_tensor = stored.read_small(prefix + "weight_shape")
    shape = tuple(int(size) for size in shape_tensor.reshape(-1).tolist())
    args = weight_args(stored.config, prefix.rstrip("."))
    bits = args.get("num_bits") if isinstance(args.get("num_bits"), int) else None
    if bits is None and len(shape) == 2 and shape[1] > 0:  # no config: the one width that fills the words
        bits = next((b for b in range(1, 9) if packed_words(shape[1], b) == packed_shape[-1]), None)
    return _checked(stored, logical, main, parts, extra, shape, bits, fmt, packed_shape)


def _int_weight(stored: StoredTensors, main: str, prefix: str, fmt: str) -> PackedWeight:
    parts = _parts(stored, prefix, ("weight", "weight_scale", "weight_zero_point"))
    extra = _parts(stored, prefix, ("weight_g_idx",)).values()
    shape = stored.infos[main].shape
    return _checked(stored, main, main, parts, extra, shape, None, fmt, shape)


def _checked(stored, logical, main, parts, extra, shape, bits, fmt, stored_shape) -> PackedWeight:
    width = f"int{bits}" if bits else "int8"
    label = f"compressed-tensors {fmt} {width}"
    problem = None
    layout = None
    packed = tuple(stored_shape) != tuple(shape)  # weight_packed: codes packed into int32 words
    scale_shape = stored.infos[parts["weight_scale"]].shape
    # The packed data must hold the shape it claims, checked before anything is allocated for it.
    if len(shape) != 2 or min(shape) < 1:
        problem = f"weight_shape {list(shape)} is not a matrix shape"
    elif packed and bits is None:
        problem = f"weight_packed {list(stored_shape)} cannot hold weight_shape {list(shape)} at any width of 1 to 8 bits"
    elif bits is not None and not (1 <= bits <= 8 and tuple(stored_shape) == (shape[0], packed_words(shape[1], bits))):
        problem = f"weight_packed {list(stored_shape)} does not hold {list(shape)} at {bits} bits"
    elif (layout := _layout(shape, scale_shape)) is None:
        problem = f"weight_scale {list(scale_shape)} fits no tensor, channel or group layout of {list(shape)}"
    elif "weight_zero_point" in parts and tuple(stored.infos[parts["weight_zero_point"]].shape) not in _zero_point_shapes(
        shape, scale_shape, bits
    ):
        problem = f"weight_zero_point {list(stored.infos[parts['weight_zero_point']].shape)} does not fit weight_scale"
    if problem:
        raise ImpossibleParts(f"{main}: compressed-tensors {problem}")
    if any(key.endswith("weight_g_idx") for key in extra):
        reason = "compressed-tensors weight_g_idx (activation-ordered groups) is not supported"
        return unreadable(logical, main, tuple(shape), label, reason, [*parts.values(), *extra])
    label += f" {layout[1]}" + (" asym" if "weight_zero_point" in parts else "")
    decode = partial(_decode, shape=tuple(shape), bits=bits, col_step=layout[0])
    info = TensorInfo(logical, tuple(shape), torch.float32, label)
    return PackedWeight(info, main, parts, decode, hidden=tuple(extra))


def _zero_point_shapes(shape, scale_shape, bits: int | None) -> set[tuple[int, ...]]:
    """Shapes a zero point may have beside a scale of `scale_shape` (packed down the rows when bits is set)."""
    if bits is None or math.prod(scale_shape) == 1:
        return {tuple(scale_shape)}
    groups = scale_shape[1] if len(scale_shape) == 2 else 1
    return {(packed_words(shape[0], bits), groups)}


def _decode(parts, shape: tuple[int, int], bits: int | None, col_step: int) -> torch.Tensor:
    codes = parts.get("weight_packed", parts.get("weight"))
    return dequantize_compressed(codes, parts["weight_scale"], parts.get("weight_zero_point"), shape, bits, col_step)
