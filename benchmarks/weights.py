"""Weight reading for the baseline scripts (floor, naive, FARMS loop): torch and safetensors only.

    for key, weight in weight_matrices("benchmarks/work/llama-..."):  # one tensor in memory at a time
        ...
    state = load_everything("resnet50.pth")                           # the whole state dict, as naive tools do

The baselines analyse the same tensors as htsr (algorithms.md section 1): keys
whose last component ends in `weight`, 2-D to 4-D, floating point, with at
least 10 eigenvalues.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

MIN_EVALS = 10
_FLOAT_CODES = {"F64", "F32", "F16", "BF16"}  # safetensors dtype names


def is_matrix(key: str, shape: tuple[int, ...], floating: bool) -> bool:
    if not floating or not 2 <= len(shape) <= 4 or not key.rsplit(".", 1)[-1].lower().endswith("weight"):
        return False
    return math.prod(shape[2:]) * min(shape[0], shape[1]) >= MIN_EVALS


def as_slices(weight: torch.Tensor) -> torch.Tensor:
    """[out, in, *kernel] -> [prod(kernel), out, in]; a matrix becomes [1, rows, cols]."""
    if weight.dim() == 2:
        return weight.unsqueeze(0)
    return weight.reshape(weight.shape[0], weight.shape[1], -1).permute(2, 0, 1)


def safetensors_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the file itself, or a directory's shards."""
    if path.is_file():
        return [path]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / shard for shard in shards]
    return sorted(path.glob("*.safetensors"))


def _is_torch_file(path: Path) -> bool:
    return path.suffix in (".pth", ".pt", ".bin")


def _matrix_keys(handle) -> list[str]:
    """The analysable keys of an open safetensors file, from its header alone."""
    keys = []
    for key in handle.keys():
        stored = handle.get_slice(key)
        if is_matrix(key, tuple(stored.get_shape()), stored.get_dtype() in _FLOAT_CODES):
            keys.append(key)
    return keys


def weight_matrices(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) for every analysable weight, read lazily one tensor at a time."""
    path = Path(path)
    if _is_torch_file(path):
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        for key, tensor in state.items():
            if is_matrix(key, tuple(tensor.shape), tensor.is_floating_point()):
                yield key, tensor
        return
    for file in safetensors_files(path):
        with safe_open(file, framework="pt") as handle:
            for key in _matrix_keys(handle):
                yield key, handle.get_tensor(key)


def matrix_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every analysable weight, without reading tensor data."""
    path = Path(path)
    if _is_torch_file(path):
        return {key: tuple(tensor.shape) for key, tensor in weight_matrices(path)}  # memory-mapped: no data read
    shapes = {}
    for file in safetensors_files(path):
        with safe_open(file, framework="pt") as handle:
            shapes.update({key: tuple(handle.get_slice(key).get_shape()) for key in _matrix_keys(handle)})
    return shapes


def load_everything(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in memory at once (no memory map)."""
    path = Path(path)
    if _is_torch_file(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    state: dict[str, torch.Tensor] = {}
    for file in safetensors_files(path):
        state.update(load_file(file))
    return state
