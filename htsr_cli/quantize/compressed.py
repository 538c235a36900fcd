"""RTN weights in compressed-tensors' `pack-quantized` format (what llm-compressor writes and
vLLM, transformers and htsr read; the layout htsr reads in checkpoints/quantized/compressed_tensors.py).

Per quantized Linear `PREFIX.weight`:
    PREFIX.weight_packed      int32 [rows, ceil(cols * bits / 32)]  each row's codes + 2^(bits-1), one bit stream
    PREFIX.weight_shape       int64 [2]                             rows, cols
    PREFIX.weight_scale       weight dtype [rows, groups]
    PREFIX.weight_zero_point  int32 [ceil(rows * bits / 32), groups] asymmetric only, packed down the rows
and config.json's `quantization_config` with one config group per width whose
targets are the module names.
"""

from __future__ import annotations

from typing import Any

import torch

from htsr_cli.checkpoints.quantized.packing import pack_codes, packed_words
from htsr_cli.quantize.rtn import RtnWeight

FORMAT = "pack-quantized"


def part_layout(
    prefix: str, shape: tuple[int, int], bits: int, group_size: int, symmetric: bool, scale_dtype: torch.dtype
) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """The stored tensors (dtype, shape) that replace `PREFIX.weight`, known before it is read."""
    rows, cols = shape
    groups = cols // group_size if group_size else 1
    layout = {
        prefix + "weight_packed": (torch.int32, (rows, packed_words(cols, bits))),
        prefix + "weight_shape": (torch.int64, (2,)),
        prefix + "weight_scale": (scale_dtype, (rows, groups)),
    }
    if not symmetric:
        layout[prefix + "weight_zero_point"] = (torch.int32, (packed_words(rows, bits), groups))
    return layout


def compressed_parts(prefix: str, quantized: RtnWeight) -> dict[str, torch.Tensor]:
    """The stored tensors of one quantized matrix (see `part_layout`)."""
    offset = 1 << (quantized.bits - 1)  # the format stores each signed code plus 2^(bits-1)
    parts = {
        prefix + "weight_packed": pack_codes(quantized.codes.to(torch.int64) + offset, quantized.bits, dim=1),
        prefix + "weight_shape": torch.tensor(quantized.codes.shape, dtype=torch.int64),
        prefix + "weight_scale": quantized.scale,
    }
    if quantized.zero_point is not None:
        parts[prefix + "weight_zero_point"] = pack_codes(
            quantized.zero_point.to(torch.int64) + offset, quantized.bits, dim=0
        )
    return parts


def quantization_config(modules_by_bits: dict[int, list[str]], group_size: int, symmetric: bool) -> dict[str, Any]:
    """config.json's `quantization_config`: one group per width, targets by module name."""
    groups = {}
    for bits in sorted(modules_by_bits):
        weights: dict[str, Any] = {
            "num_bits": bits,
            "type": "int",
            "symmetric": symmetric,
            "strategy": "group" if group_size else "channel",
            "group_size": group_size or None,
            "dynamic": False,
            "observer": "minmax",
        }
        groups[f"group_{bits}bit"] = {
            "targets": sorted(modules_by_bits[bits]),
            "weights": weights,
            "input_activations": None,
            "output_activations": None,
            "format": FORMAT,
        }
    return {
        "quant_method": "compressed-tensors",
        "format": FORMAT,
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": [],
        "kv_cache_scheme": None,
    }
