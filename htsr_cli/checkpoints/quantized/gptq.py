"""GPTQ and AWQ: integer codes packed into int32 `qweight`, with `qzeros`, `scales`
(and GPTQ's `g_idx`) beside it; W = (q - z) * s per group of input columns.

GPTQ (AutoGPTQ / GPTQModel): qweight [in * bits / 32, out] packs the codes of
consecutive input rows into each word as one little-endian bit stream (3-bit
codes straddle words); qzeros [G, out * bits / 32] packs along the output
columns the same way; scales [G, out]; g_idx [in] names the group of each input
row (out of order with act-order / desc_act). The original format
(`checkpoint_format` "gptq", the default) stores every zero point minus one, so
z = stored + 1; "gptq_v2" stores it as is.

AWQ (AutoAWQ GEMM): qweight [in, out * bits / 32] packs output columns, eight
4-bit codes per word in the order 0, 2, 4, 6, 1, 3, 5, 7; qzeros [G, out / 8]
likewise, no offset; scales [G, out]; groups are consecutive input rows.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from htsr_cli.checkpoints.base import TensorInfo
from htsr_cli.checkpoints.quantized.packed import ImpossibleParts, PackedWeight, StoredTensors, unreadable
from htsr_cli.checkpoints.quantized.packing import dequantize_affine, packed_words, unpack_codes

GPTQ_BITS = (2, 3, 4, 8)
# Position in a word of the code of each output column (AWQ's pack order, inverted).
AWQ_COLUMN_SLOTS = (0, 4, 1, 5, 2, 6, 3, 7)


def dequantize_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor | None,
    bits: int,
    group_size: int,
    zero_offset: int,
) -> torch.Tensor:
    """qweight [in*bits/32, out] int32, qzeros [G, out*bits/32] int32, scales [G, out],
    g_idx [in] or None (then row i is in group i // group_size) -> W [out, in] float32."""
    in_features = qweight.shape[0] * 32 // bits
    out_features = scales.shape[1]
    zeros = unpack_codes(qzeros, bits, out_features, dim=1) + zero_offset  # [G, out]

    def codes_of(r0: int, r1: int) -> torch.Tensor:  # input rows r0..r1-1, r0 a multiple of 32
        words = qweight[r0 * bits // 32 : packed_words(r1, bits)]
        return unpack_codes(words, bits, r1 - r0, dim=0)  # [r1 - r0, out]

    return dequantize_affine(
        codes_of, (in_features, out_features), scales, zeros, group_size, 1,
        row_groups=g_idx, multiple=32, transpose=True,
    )


def dequantize_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """qweight [in, out/8] int32, qzeros [G, out/8] int32, scales [G, out] -> W [out, in] float32 (4-bit)."""
    in_features, out_features = qweight.shape[0], scales.shape[1]
    slots = torch.tensor(AWQ_COLUMN_SLOTS, device=qweight.device)

    def columns(words: torch.Tensor) -> torch.Tensor:  # [n, out/8] -> [n, out] in column order
        codes = unpack_codes(words, 4, out_features, dim=1)
        return codes.reshape(words.shape[0], -1, 8)[:, :, slots].reshape(words.shape[0], out_features)

    return dequantize_affine(
        lambda r0, r1: columns(qweight[r0:r1]), (in_features, out_features), scales, columns(qzeros),
        group_size, 1, transpose=True,
    )


def _method(config, qweight_shape: tuple[int, ...], scales_shape: tuple[int, ...]) -> str:
    method = str(config.get("quant_method", "")).lower()
    if method in ("gptq", "awq"):
        return method
    # No config: GPTQ packs along the input rows (qweight keeps `out` columns), AWQ along the columns.
    return "gptq" if qweight_shape[1] == scales_shape[-1] else "awq"


def find_gptq_awq(stored: StoredTensors) -> list[PackedWeight]:
    found = []
    for key, info in stored.infos.items():
        if not key.endswith("qweight") or info.dtype != torch.int32 or len(info.shape) != 2:
            continue
        prefix = key[: -len("qweight")]
        parts = {role: prefix + role for role in ("qweight", "qzeros", "scales", "g_idx") if prefix + role in stored.infos}
        logical = prefix + "weight"
        missing = [role for role in ("qzeros", "scales") if role not in parts]
        scales_shape = stored.infos[parts["scales"]].shape if "scales" in parts else (info.shape[1],)
        scales_shape = scales_shape or (None,)  # a scalar scale: refused below, named
        method = _method(stored.config, info.shape, scales_shape)
        if missing:
            reason = f"{method} qweight without {' and '.join(missing)}"
            found.append(unreadable(logical, key, info.shape, method, reason, parts.values()))
            continue
        shapes = {role: stored.infos[stored_key].shape for role, stored_key in parts.items()}
        for role in ("qzeros", "scales"):
            if len(shapes[role]) != 2:
                raise ImpossibleParts(f"{parts[role]}: {method} {role} of shape {list(shapes[role])}, expected a matrix")
        if "g_idx" in shapes and len(shapes["g_idx"]) != 1:
            raise ImpossibleParts(f"{parts['g_idx']}: gptq g_idx of shape {list(shapes['g_idx'])}, expected a vector")
        reader = _gptq_weight if method == "gptq" else _awq_weight
        found.append(reader(logical, key, parts, shapes, stored.config))
    return found


def _config_int(config, *names: str) -> int | None:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _gptq_weight(logical: str, main: str, parts: dict[str, str], shapes: dict, config) -> PackedWeight:
    words, out_features = shapes["qweight"]
    groups = shapes["scales"][0]
    bits = _config_int(config, "bits")
    if bits is None and "g_idx" in shapes:  # no config: g_idx has one entry per input row
        bits = words * 32 // shapes["g_idx"][0] if shapes["g_idx"][0] else None
    in_features = words * 32 // bits if bits else 0
    group_size = _config_int(config, "group_size")
    if group_size is None or group_size <= 0:
        group_size = math.ceil(in_features / groups) if groups else 0
    act_order = bool(config.get("desc_act"))
    label = f"gptq int{bits} " + (f"g{group_size}" if groups > 1 else "per-channel") + (" act-order" if act_order else "")
    shape = (out_features, in_features)
    if bits not in GPTQ_BITS:  # a width htsr does not decode: the layer is skipped, with the reason
        problem = f"gptq bits {bits} not one of {', '.join(map(str, GPTQ_BITS))} (set `bits` in quantization_config)"
        return unreadable(logical, main, shape, label, problem, parts.values())
    problem = None
    if in_features * bits != words * 32 or in_features % 32:
        problem = f"gptq qweight {list(shapes['qweight'])} does not hold whole 32-row groups of {bits}-bit codes"
    elif group_size <= 0 or tuple(shapes["scales"]) != (groups, out_features) or groups != math.ceil(in_features / group_size):
        problem = f"gptq scales {list(shapes['scales'])} do not fit qweight {list(shapes['qweight'])} with group size {group_size}"
    elif tuple(shapes["qzeros"]) != (groups, packed_words(out_features, bits)):
        problem = f"gptq qzeros {list(shapes['qzeros'])} do not fit scales {list(shapes['scales'])} at {bits} bits"
    elif "g_idx" in shapes and tuple(shapes["g_idx"]) != (in_features,):
        problem = f"gptq g_idx {list(shapes['g_idx'])} does not have one entry per input row ({in_features})"
    if problem:
        raise ImpossibleParts(f"{main}: {problem}")
    # The original GPTQ format stores zero points minus one (AutoGPTQ's pack); v2 does not.
    zero_offset = 0 if str(config.get("checkpoint_format", "gptq")).lower() == "gptq_v2" else 1
    decode = partial(_decode_gptq, bits=bits, group_size=group_size, zero_offset=zero_offset, key=parts.get("g_idx"))
    return PackedWeight(TensorInfo(logical, shape, torch.float32, label), main, parts, decode)


def _decode_gptq(parts, bits: int, group_size: int, zero_offset: int, key: str | None) -> torch.Tensor:
    g_idx = parts.get("g_idx")
    if g_idx is not None and g_idx.numel():
        # Each entry names the group of an input row: one outside the scales would index past them.
        groups = parts["scales"].shape[0]
        low, high = int(g_idx.min()), int(g_idx.max())
        if low < 0 or high >= groups:
            raise ImpossibleParts(f"{key}: gptq g_idx names group {low if low < 0 else high}, but there are {groups} groups")
    return dequantize_gptq(
        parts["qweight"], parts["qzeros"], parts["scales"], parts.get("g_idx"), bits, group_size, zero_offset
    )


def _awq_weight(logical: str, main: str, parts: dict[str, str], shapes: dict, config) -> PackedWeight:
    in_features, words = shapes["qweight"]
    groups, out_features = shapes["scales"]
    bits = _config_int(config, "bits", "w_bit") or (words * 32 // out_features if out_features else 0)
    group_size = _config_int(config, "group_size", "q_group_size")
    if group_size is None or group_size <= 0:
        group_size = math.ceil(in_features / groups) if groups else 0
    label = f"awq int{bits} " + (f"g{group_size}" if groups > 1 else "per-channel")
    version = str(config.get("version", "gemm")).lower()
    shape = (out_features, in_features)
    unsupported = None
    if version != "gemm":
        unsupported = f"awq version {version!r} is not supported (only gemm)"
    elif bits != 4:
        unsupported = f"awq bits {bits}: only 4-bit AWQ is supported"
    if unsupported:
        return unreadable(logical, main, shape, label, unsupported, parts.values())
    if out_features * bits != words * 32:
        raise ImpossibleParts(f"{main}: awq qweight {list(shapes['qweight'])} does not fit scales {list(shapes['scales'])}")
    if group_size <= 0 or groups != math.ceil(in_features / group_size) or tuple(shapes["qzeros"]) != (groups, words):
        raise ImpossibleParts(
            f"{main}: awq scales {list(shapes['scales'])} / qzeros {list(shapes['qzeros'])} do not fit "
            f"qweight {list(shapes['qweight'])} with group size {group_size}"
        )
    decode = partial(_decode_awq, group_size=group_size)
    return PackedWeight(TensorInfo(logical, shape, torch.float32, label), main, parts, decode)


def _decode_awq(parts, group_size: int) -> torch.Tensor:
    return dequantize_awq(parts["qweight"], parts["qzeros"], parts["scales"], group_size)
