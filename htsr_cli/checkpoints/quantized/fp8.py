"""FP8 weights with scales: `weight` in float8 (e4m3 or e5m2) and `weight_scale`
or `weight_scale_inv` beside it.

The scale's shape says how it is applied (W = weight * scale, stretched):
- one value: per tensor;
- [out] or [out, 1]: per output channel;
- [out, in / g]: per group of g input columns (compressed-tensors `group`);
- [ceil(out / b0), ceil(in / b1)]: per b0 x b1 block. DeepSeek-V3/R1 store this as
  `weight_scale_inv` with 128 x 128 blocks (the config's `weight_block_size`);
  despite its name it multiplies, as transformers' and DeepSeek's own kernels apply it.
An FP8 weight without a scale is read as a plain tensor.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from htsr_cli.checkpoints.base import TensorInfo
from htsr_cli.checkpoints.quantized.packed import PackedWeight, StoredTensors, unreadable
from htsr_cli.checkpoints.quantized.packing import dequantize_affine

FP8_NAMES = {
    getattr(torch, dtype): name
    for dtype, name in (
        ("float8_e4m3fn", "fp8-e4m3"),
        ("float8_e5m2", "fp8-e5m2"),
        ("float8_e4m3fnuz", "fp8-e4m3fnuz"),
        ("float8_e5m2fnuz", "fp8-e5m2fnuz"),
    )
    if hasattr(torch, dtype)
}
SCALE_SUFFIXES = ("_scale_inv", "_scale")
DEFAULT_BLOCK = (128, 128)


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, row_step: int, col_step: int) -> torch.Tensor:
    """weight [out, in] float8 times its scale grid (see `scale_layout`) -> [out, in] float32."""
    return dequantize_affine(
        lambda r0, r1: weight[r0:r1], tuple(weight.shape), scale, None, row_step, col_step
    )


def scale_layout(
    shape: tuple[int, ...], scale_shape: tuple[int, ...], block: tuple[int, int] | None
) -> tuple[int, int, str] | None:
    """(row_step, col_step, label) of a scale of `scale_shape` for a weight of `shape`; None if it fits no layout."""
    rows, cols = shape
    count = math.prod(scale_shape)
    if count == 1:
        return rows, cols, "per-tensor"
    if tuple(scale_shape) in ((rows,), (rows, 1)):
        return 1, cols, "per-channel"
    for b0, b1 in (block or DEFAULT_BLOCK, DEFAULT_BLOCK):
        if tuple(scale_shape) == (math.ceil(rows / b0), math.ceil(cols / b1)):
            return b0, b1, f"block {b0}x{b1}"
    if len(scale_shape) == 2 and scale_shape[0] == rows and cols % scale_shape[1] == 0:
        group = cols // scale_shape[1]
        return 1, group, f"group {group}"
    return None


def config_block(config) -> tuple[int, int] | None:
    """The block shape a checkpoint's quantization_config declares, if any."""
    block = config.get("weight_block_size")
    if block is None:
        for group in (config.get("config_groups") or {}).values():
            block = ((group or {}).get("weights") or {}).get("block_structure") or block
    if isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block):
        return int(block[0]), int(block[1])
    return None


def find_fp8(stored: StoredTensors) -> list[PackedWeight]:
    found = []
    block = config_block(stored.config)
    for key, info in stored.infos.items():
        name = FP8_NAMES.get(info.dtype)
        if name is None or len(info.shape) != 2 or not key.endswith("weight"):
            continue
        scale_key = next((key + suffix for suffix in SCALE_SUFFIXES if key + suffix in stored.infos), None)
        if scale_key is None:
            continue  # unscaled FP8: a plain tensor
        scale_shape = stored.infos[scale_key].shape
        layout = scale_layout(info.shape, scale_shape, block)
        if layout is None:
            reason = f"{name} scale {list(scale_shape)} fits no per-tensor, per-channel, group or block layout of {list(info.shape)}"
            found.append(unreadable(key, key, info.shape, name, reason, (scale_key,)))
            continue
        row_step, col_step, label = layout
        decode = partial(_decode, row_step=row_step, col_step=col_step)
        logical = TensorInfo(key, info.shape, torch.float32, f"{name} {label}")
        found.append(PackedWeight(logical, key, {"weight": key, "scale": scale_key}, decode))
    return found


def _decode(parts, row_step: int, col_step: int) -> torch.Tensor:
    return dequantize_fp8(parts["weight"], parts["scale"], row_step, col_step)
