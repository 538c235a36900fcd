"""Checkpoint readers: where weights come from.

`open_checkpoint` takes whatever the user has (a torch file, a safetensors
file, a Hugging Face directory, a hub id, an `nn.Module` or a state dict) and
returns a `Checkpoint` that lists tensors without reading them and loads one
at a time, so a model never has to fit in memory.

    with open_checkpoint("resnet18-f37072fd.pth") as checkpoint:
        for info in checkpoint.tensors():
            weight = checkpoint.load(info.key)
"""

from __future__ import annotations

import importlib
from typing import Any

# Resolved on first use: `sources` (checking a checkpoint argument) is imported by
# commands that must start without torch, and importing it imports this package.
_EXPORTS = {
    "Checkpoint": "htsr_cli.checkpoints.base",
    "TensorInfo": "htsr_cli.checkpoints.base",
    "open_checkpoint": "htsr_cli.checkpoints.opening",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'htsr_cli.checkpoints' has no attribute {name!r}")
