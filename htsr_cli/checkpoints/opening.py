"""open_checkpoint: from whatever the user has to the right reader."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from htsr_cli.checkpoints.base import Checkpoint
from htsr_cli.checkpoints.hf_directory import open_directory
from htsr_cli.checkpoints.hub import resolve_repo
from htsr_cli.checkpoints.onnx_file import is_onnx_file
from htsr_cli.checkpoints.parametrized import with_effective_weights
from htsr_cli.checkpoints.peft_adapter import ADAPTER_FILES, AdapterCheckpoint, MergedCheckpoint, PeftAdapter
from htsr_cli.checkpoints.quantized import with_quantized_weights
from htsr_cli.checkpoints.quantized.gguf_file import is_gguf_file
from htsr_cli.checkpoints.sharded import ShardedCheckpoint
from htsr_cli.checkpoints.statedict import StateDictCheckpoint
from htsr_cli.checkpoints.torchfile import is_torch_file
from htsr_cli.checkpoints.transformers_model import TransformersModelCheckpoint, is_transformers_model
from htsr_cli.errors import HtsrError
from htsr_cli.checkpoints.sources import HubId, MergedAdapter, is_adapter_directory, locate

CheckpointSource = str | os.PathLike | torch.nn.Module | Mapping[str, torch.Tensor] | MergedAdapter | Checkpoint


def open_checkpoint(source: CheckpointSource) -> Checkpoint:
    """A reader for `source`; raises `HtsrError` (one line) when it cannot be read.

    A `Checkpoint` is its own reader (a caller that serves tensors it computes,
    such as a LoRA layer's effective weight, passes one).
    """
    if isinstance(source, Checkpoint):
        return source
    if is_transformers_model(source):  # keyed as its save_pretrained directory would be
        return TransformersModelCheckpoint(source)
    if isinstance(source, MergedAdapter):
        return _open_merged(source)
    return with_effective_weights(_open_source(source))


def _open_merged(source: MergedAdapter) -> Checkpoint:
    """The base with the adapter merged in; one line when either is not what it should be."""
    adapter_path = locate(source.adapter)
    if isinstance(adapter_path, HubId) or not is_adapter_directory(adapter_path):
        raise HtsrError(f"{source.adapter}: --merged needs a PEFT adapter directory (with adapter_config.json)")
    base_path = locate(source.base)
    if isinstance(base_path, Path) and is_adapter_directory(base_path):
        raise HtsrError(f"{source.base}: the base is itself an adapter; pass the model the adapter was trained on")
    adapter = PeftAdapter(adapter_path, source.adapter)
    try:
        base = with_effective_weights(_open_source(source.base))
    except BaseException:
        adapter.file.close()
        raise
    try:
        return MergedCheckpoint(base, adapter, str(source))
    except BaseException:
        adapter.file.close()
        base.close()
        raise


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
    if is_adapter_directory(where):
        return AdapterCheckpoint(where, text)
    if where.name in ADAPTER_FILES and is_adapter_directory(where.parent):
        return AdapterCheckpoint(where.parent, text)  # the adapter's weight file named: the adapter it belongs to
    if where.is_dir() and any((where / name).is_file() for name in ADAPTER_FILES):
        raise HtsrError(f"{text}: a PEFT adapter's weights without its adapter_config.json (r and lora_alpha are needed)")
    if where.is_dir():
        return with_quantized_weights(open_directory(where, text), where)
    return _open_file(where, text)


def _open_file(path: Path, source: str) -> Checkpoint:
    if is_onnx_file(path):
        from htsr_cli.checkpoints.onnx_file import OnnxCheckpoint  # imports the onnx package

        return OnnxCheckpoint(path, source)
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
        ".bin, .ckpt, .gguf, .onnx, or a Hugging Face directory)"
    )
