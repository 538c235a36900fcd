"""open_checkpoint: from whatever the user has to the right reader."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from htsr_cli.checkpoints.base import Checkpoint
from htsr_cli.checkpoints.hf_directory import open_directory
from htsr_cli.checkpoints.hub import resolve_repo
from htsr_cli.checkpoints.parametrized import with_effective_weights
from htsr_cli.checkpoints.quantized import with_quantized_weights
from htsr_cli.checkpoints.quantized.gguf_file import is_gguf_file
from htsr_cli.checkpoints.sharded import ShardedCheckpoint
from htsr_cli.checkpoints.statedict import StateDictCheckpoint
from htsr_cli.checkpoints.torchfile import is_torch_file
from htsr_cli.checkpoints.transformers_model import TransformersModelCheckpoint, is_transformers_model
from htsr_cli.errors import HtsrError
from htsr_cli.checkpoints.sources import HubId, locate

CheckpointSource = str | os.PathLike | torch.nn.Module | Mapping[str, torch.Tensor] | Checkpoint


def open_checkpoint(source: CheckpointSource) -> Checkpoint:
    """A reader for `source`; raises `HtsrError` (one line) when it cannot be read.

    A `Checkpoint` is its own reader (a caller that serves tensors it computes,
    such as a LoRA layer's effective weight, passes one).
    """
    if isinstance(source, Checkpoint):
        return source
    if is_transformers_model(source):  # keyed as its save_pretrained directory would be
        return TransformersModelCheckpoint(source)
    return with_effective_weights(_open_source(source))


def _open_source(source: CheckpointSource) -> Checkpoint:
    if isinstance(source, (torch.nn.Module, Mapping)):
        return StateDictCheckpoint.from_object(source)
    if not isinstance(source, (str, os.PathLike)):
        raise HtsrError(
            f"cannot read a checkpoint from a {type(source).__name__}: pass a path, a hub id "
            "(org/name), an nn.Module or a state dict"
        )
    text = os.fsdecode(source)
    where = locate(text)
    if isinstance(where, HubId):
        directory = resolve_repo(where)
        return with_quantized_weights(open_directory(directory, text), directory)
    if where.is_dir():
        return with_quantized_weights(open_directory(where, text), where)
    return _open_file(where, text)


def _open_file(path: Path, source: str) -> Checkpoint:
    if is_gguf_file(path):
        from htsr_cli.checkpoints.quantized.gguf_file import GgufCheckpoint  # imports the gguf package

        return GgufCheckpoint(path, source)
    return with_quantized_weights(_open_weight_file(path, source), path.parent)


def _open_weight_file(path: Path, source: str) -> Checkpoint:
    if path.suffix.lower() == ".safetensors":
        # Saved by a Hugging Face model? Its config beside the file gives the module order.
        return ShardedCheckpoint(source, [path], config_dir=path.parent, sorted_storage=True)
    if is_torch_file(path):
        return ShardedCheckpoint(source, [path], sorted_storage=False)
    raise HtsrError(
        f"{source}: unknown checkpoint format '{path.suffix}' (expected .safetensors, .pt, .pth, "
        ".bin, .ckpt, .gguf, or a Hugging Face directory)"
    )
