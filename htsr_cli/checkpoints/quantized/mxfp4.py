"""MXFP4 (OCP microscaling, as gpt-oss ships its experts): `NAME_blocks` and `NAME_scales`.

blocks [..., rows, G, 16] uint8 hold 32 fp4 e2m1 codes per group of 32 input
columns, two per byte with the first in the low nibble; scales [..., rows, G]
are e8m0 exponents (2^(s - 127)). gpt-oss stores its fused expert tensors as
[E, out, G, 16] while the model holds `NAME` as [E, in, out] (x @ W), so a 3-D
weight is returned transposed per expert, as transformers' loader does.
"""

from __future__ import annotations

import torch

from htsr_cli.checkpoints.base import TensorInfo
from htsr_cli.checkpoints.quantized.packed import PackedWeight, StoredTensors, unreadable
from htsr_cli.checkpoints.quantized.packing import E2M1_VALUES, chunks

E8M0_BIAS = 127
SCALE_DTYPES = (torch.uint8,) + ((torch.float8_e8m0fnu,) if hasattr(torch, "float8_e8m0fnu") else ())


def dequantize_mxfp4_matrix(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """blocks [rows, G, 16] uint8, scales [rows, G] e8m0 -> [rows, G*32] float32."""
    rows, groups, _ = blocks.shape
    codes_by_group = blocks.reshape(rows * groups, 16)
    exponents = scales.reshape(-1)
    exponents = (exponents if exponents.dtype == torch.uint8 else exponents.view(torch.uint8)).to(torch.int32) - E8M0_BIAS
    values = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=blocks.device)
    out = torch.empty(rows * groups, 32, dtype=torch.float32, device=blocks.device)
    for g0, g1 in chunks(rows * groups, 32):
        pairs = codes_by_group[g0:g1]
        codes = torch.stack((pairs & 0xF, pairs >> 4), dim=-1).reshape(g1 - g0, 32)  # low nibble first
        torch.ldexp(values[codes.long()], exponents[g0:g1, None].to(torch.float32), out=out[g0:g1])
    return out.reshape(rows, groups * 32)


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """blocks [rows, G, 16] -> [rows, G*32]; fused experts [E, out, G, 16] -> [E, G*32 (in), out] float32."""
    if blocks.dim() == 3:
        return dequantize_mxfp4_matrix(blocks, scales)
    experts, rows, groups, _ = blocks.shape
    out = torch.empty(experts, groups * 32, rows, dtype=torch.float32, device=blocks.device)
    for expert in range(experts):  # one expert's matrix of scratch at a time
        out[expert] = dequantize_mxfp4_matrix(blocks[expert], scales[expert]).T
    return out


def find_mxfp4(stored: StoredTensors) -> list[PackedWeight]:
    found = []
    for key, info in stored.infos.items():
        if not key.endswith("_blocks") or info.dtype != torch.uint8:
            continue
        name = key[: -len("_blocks")]
        scales_key = name + "_scales"
        if scales_key not in stored.infos:
            continue
        scales = stored.infos[scales_key]
        if (
            len(info.shape) not in (3, 4)
            or info.shape[-1] != 16
            or tuple(scales.shape) != tuple(info.shape[:-1])
            or scales.dtype not in SCALE_DTYPES
        ):
            reason = f"mxfp4 blocks {list(info.shape)} and scales {list(scales.shape)} are not [..., rows, G, 16] and [..., rows, G]"
            found.append(unreadable(name, key, tuple(info.shape), "mxfp4", reason, (scales_key,)))
            continue
        *experts, rows, groups, _ = info.shape
        shape = (*experts, groups * 32, rows) if experts else (rows, groups * 32)  # experts: [E, in, out]
        logical = TensorInfo(name, shape, torch.float32, "mxfp4")
        found.append(PackedWeight(logical, key, {"blocks": key, "scales": scales_key}, _decode))
    return found


def _decode(parts) -> torch.Tensor:
    return dequantize_mxfp4(parts["blocks"], parts["scales"])
