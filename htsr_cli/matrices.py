"""From stored tensors to the matrices whose spectra htsr analyses (algorithms.md section 1).

A weight tensor becomes a stack of 2-D slices, [B, rows, cols]:
linear/embedding B = 1, conv2d B = kh*kw, conv1d B = k. The spectra of all
slices are pooled into one ESD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from htsr_cli.names import block_of, module_name

_FLOAT_DTYPES = {torch.float64, torch.float32, torch.float16, torch.bfloat16} | {
    getattr(torch, name)
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, name)
}
_EMBEDDING_PARTS = ("wte", "wpe", "shared")


@dataclass(frozen=True)
class MatrixSpec:
    """What a weight tensor is, decided from its key, shape and dtype alone (no data read)."""

    name: str  # module path: the key without ".weight"
    tensor: str  # the stored key
    kind: str  # linear | embedding | conv2d | conv1d | other
    shape: tuple[int, ...]
    block: str | None
    params: int
    num_evals: int  # eigenvalues in the pooled ESD (0 when not analysable)
    skip_reason: str | None  # set when the tensor cannot be analysed at all
    storage: str | None = None  # how the weight is stored (see TensorInfo.storage_label)


def is_weight_key(key: str) -> bool:
    """Weight matrices are the tensors whose last key component ends in `weight`.

    This keeps buffers out (BatchNorm statistics, GPT-2 causal masks named
    `attn.bias`, `position_ids`) along with biases and class tokens.
    """
    return key.rsplit(".", 1)[-1].lower().endswith("weight")


def _slice_grid(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(slices, rows, cols) of the matrix stack a tensor of this shape becomes."""
    rows, cols = shape[0], shape[1]
    slices = 1
    for size in shape[2:]:
        slices *= size
    return slices, rows, cols


def describe(
    key: str, shape: tuple[int, ...], dtype: torch.dtype, min_evals: int, storage: str | None = None
) -> MatrixSpec | None:
    """Classify a stored tensor; None for tensors that are not weight matrices (biases, norms, buffers)."""
    if len(shape) < 2 or not is_weight_key(key):
        return None
    name = module_name(key)
    params = 1
    for size in shape:
        params *= size
    kinds = {2: "linear", 3: "conv1d", 4: "conv2d"}
    kind = kinds.get(len(shape), "other")
    if kind == "linear" and _is_embedding(name):
        kind = "embedding"
    slices, rows, cols = _slice_grid(shape)
    num_evals = slices * min(rows, cols) if kind != "other" else 0
    reason = None
    if dtype.is_complex:
        reason = "complex dtype, not supported"
        num_evals = 0
    elif dtype not in _FLOAT_DTYPES:
        reason = "quantized"
        num_evals = 0
    elif kind == "other":
        reason = f"unsupported {len(shape)}-D tensor"
    elif num_evals < min_evals:
        reason = f"{num_evals} eigenvalues < min_evals {min_evals}"
    return MatrixSpec(name, key, kind, tuple(shape), block_of(name), params, num_evals, reason, storage)


def _is_embedding(name: str) -> bool:
    parts = name.lower().split(".")
    return "embed" in name.lower() or any(part in _EMBEDDING_PARTS for part in parts)


def as_slices(weight: torch.Tensor) -> torch.Tensor:
    """[out, in, *kernel] -> [prod(kernel), out, in]; a 2-D matrix becomes [1, rows, cols].

    A view, not a copy: the solver upcasts and copies once when it moves the data.
    """
    if weight.dim() == 2:
        return weight.unsqueeze(0)
    out_features, in_features = weight.shape[:2]
    return weight.reshape(out_features, in_features, -1).permute(2, 0, 1)
