"""From stored tensors to the matrices whose spectra htsr analyses (algorithms.md section 1).

A weight tensor becomes a stack of 2-D slices, [B, rows, cols]:
linear/embedding B = 1, conv2d B = kh*kw, conv1d B = k. The spectra of all
slices are pooled into one ESD.

Mixture-of-Experts layers are often held fused: one 3-D parameter under an
`experts` module holds every expert's matrix (transformers 5:
`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj` [E, H, I]).
Such a tensor is E separate linear layers named `...experts.<i>.<proj>`,
exactly as a per-expert checkpoint names them, never a conv1d; a fused
`gate_up` projection is two layers per expert, `gate` and `up`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from htsr_cli.names import block_of, module_name

_FLOAT_DTYPES = {torch.float64, torch.float32, torch.float16, torch.bfloat16} | {
    getattr(torch, name)
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, name)
}
# GPT-2 and T5 names, and GGUF's (token_embd, position_embd, token_types).
_EMBEDDING_PARTS = ("wte", "wpe", "shared", "token_embd", "position_embd", "token_types")
# Kinds whose matrices are kernel-position slices of one conv: their pooled ESD is
# rescaled by conv_scale, and FARMS divides them instead of sliding windows.
CONV_KINDS = ("conv1d", "conv2d")
EXPERTS_MODULE = "experts"
FUSED_GATE_UP = "gate_up"
# Models whose fused gate_up alternates gate and up columns along its last axis
# ([E, H, 2I], stored (in, out): transformers' GptOssExperts takes gate_up[..., ::2]
# and gate_up[..., 1::2]); every other model stacks gate above up along axis 1.
INTERLEAVED_GATE_UP_MODELS = frozenset({"gpt_oss"})


@dataclass(frozen=True)
class ExpertPart:
    """Which matrix of a fused expert tensor [E, a, b] a layer is."""

    expert: int
    half: int | None = None  # fused gate_up: 0 = gate, 1 = up; None = the whole [a, b] matrix
    interleaved: bool = False  # the halves alternate along the last axis instead of splitting axis 1


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
    part: ExpertPart | None = None  # set for one expert's matrix of a fused expert tensor
    dtype: torch.dtype | None = None  # the dtype the tensor is read in

    @property
    def slice_grid(self) -> tuple[int, int, int]:
        """(slices, rows, cols) of the matrix stack this layer is solved as."""
        return _slice_grid(self.shape)


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
    key: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    min_evals: int,
    storage: str | None = None,
    unreadable: str | None = None,
) -> MatrixSpec | None:
    """Classify a stored tensor; None for tensors that are not weight matrices (biases, norms, buffers).

    `unreadable` is the reader's reason why the tensor cannot be decoded (a quantization type it lacks).
    """
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
    if unreadable is not None:
        reason = unreadable
        num_evals = 0
    elif dtype.is_complex:
        reason = "complex dtype, not supported"
        num_evals = 0
    elif dtype not in _FLOAT_DTYPES:
        reason = "quantized"
        num_evals = 0
    elif kind == "other":
        reason = f"unsupported {len(shape)}-D tensor"
    elif num_evals < min_evals:
        reason = f"{num_evals} eigenvalues < min_evals {min_evals}"
    return MatrixSpec(name, key, kind, tuple(shape), block_of(name), params, num_evals, reason, storage, dtype=dtype)


def matrix_specs(
    key: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    min_evals: int,
    storage: str | None = None,
    model_type: str | None = None,
    unreadable: str | None = None,
) -> list[MatrixSpec]:
    """The layers one stored tensor holds: none, one, or one per expert (and per gate/up half)."""
    if is_fused_experts(key, shape, dtype):
        interleaved = model_type in INTERLEAVED_GATE_UP_MODELS
        return expert_specs(key, shape, dtype, min_evals, storage, interleaved, unreadable)
    spec = describe(key, shape, dtype, min_evals, storage, unreadable)
    return [] if spec is None else [spec]


def is_fused_experts(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    """A 3-D parameter under an `experts` module, whatever its name (not a bias, not packed metadata)."""
    *modules, parameter = key.split(".")
    return (
        len(shape) == 3
        and EXPERTS_MODULE in (module.lower() for module in modules)
        and not parameter.lower().endswith("bias")
        and (dtype in _FLOAT_DTYPES or is_weight_key(key))
    )


def expert_specs(
    key: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    min_evals: int,
    storage: str | None,
    interleaved: bool,
    unreadable: str | None = None,
) -> list[MatrixSpec]:
    """One linear layer per expert of a fused [E, a, b] tensor, two per expert for a fused gate_up.

    Names put the expert index right after the `experts` module:
    `mlp.experts.gate_up_proj` -> `mlp.experts.3.gate_proj` and `mlp.experts.3.up_proj`;
    `experts.w1.weight` -> `experts.3.w1`. Contiguous gate/up halves are listed
    expert by expert and interleaved ones half by half, so that the matrices of
    each run are evenly spaced views of the tensor (see `merge_runs`).
    """
    experts, rows, cols = shape
    parts = module_name(key).split(".")
    at = len(parts) - 1 - [part.lower() for part in parts][::-1].index(EXPERTS_MODULE)
    prefix, rest = parts[: at + 1], parts[at + 1 :]
    if rest and FUSED_GATE_UP in rest[-1] and (cols if interleaved else rows) % 2 == 0:
        names = [rest[-1].replace(FUSED_GATE_UP, "gate", 1), rest[-1].replace(FUSED_GATE_UP, "up", 1)]
        rows, cols = (rows, cols // 2) if interleaved else (rows // 2, cols)
        halves: list[int | None] = [0, 1]
    else:
        names, halves = [rest[-1]] if rest else [], [None]
    order = (
        [(half, expert) for half in range(len(halves)) for expert in range(experts)]
        if interleaved
        else [(half, expert) for expert in range(experts) for half in range(len(halves))]
    )
    specs = []
    for half, expert in order:
        name = ".".join([*prefix, str(expert), *rest[:-1], *names[half : half + 1]])
        spec = describe(f"{name}.weight", (rows, cols), dtype, min_evals, storage, unreadable)
        part = ExpertPart(expert, halves[half], interleaved)
        specs.append(MatrixSpec(
            name, key, "linear", (rows, cols), spec.block, spec.params, spec.num_evals,
            spec.skip_reason, storage, part, dtype,
        ))
    return specs


def _is_embedding(name: str) -> bool:
    parts = name.lower().split(".")
    return "embed" in name.lower() or any(part in _EMBEDDING_PARTS for part in parts)


def as_slices(weight: torch.Tensor, part: ExpertPart | None = None) -> torch.Tensor:
    """[out, in, *kernel] -> [prod(kernel), out, in]; a 2-D matrix becomes [1, rows, cols];
    one expert's matrix of a fused [E, a, b] tensor becomes [1, rows, cols].

    A view, not a copy: the solver upcasts and copies once when it moves the data.
    """
    if part is not None:
        matrix = weight[part.expert]  # [a, b]
        if part.half is not None and part.interleaved:
            matrix = matrix[:, part.half :: 2]
        elif part.half is not None:
            rows = matrix.shape[0] // 2
            matrix = matrix[part.half * rows : (part.half + 1) * rows]
        return matrix.unsqueeze(0)
    if weight.dim() == 2:
        return weight.unsqueeze(0)
    out_features, in_features = weight.shape[:2]
    return weight.reshape(out_features, in_features, -1).permute(2, 0, 1)


def merge_runs(stacks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Join consecutive single matrices that are evenly spaced views of one tensor into one view.

    The experts of a fused tensor then go through one batched matrix product
    instead of one call each; anything else stays as it is. [1, r, c] views at
    storage offsets o, o + d, o + 2d, ... become one [k, r, c] view with stride d.
    """
    runs: list[torch.Tensor] = []
    for stack in stacks:
        last = runs[-1] if runs else None
        if (
            last is not None
            and stack.shape[0] == 1
            and stack.shape[1:] == last.shape[1:]
            and stack.stride()[1:] == last.stride()[1:]
            and stack.dtype == last.dtype
            and stack.device == last.device
            and stack.untyped_storage().data_ptr() == last.untyped_storage().data_ptr()
        ):
            gap = stack.storage_offset() - last.storage_offset()
            step = gap if last.shape[0] == 1 else last.stride(0)
            if step > 0 and gap == step * last.shape[0]:
                runs[-1] = last.as_strided((last.shape[0] + 1, *last.shape[1:]), (step, *last.stride()[1:]))
                continue
        runs.append(stack)
    return runs
