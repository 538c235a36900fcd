"""Weights in one or more files (a single file is one shard), read one file at a time.

Only one file is open at any moment, so memory stays bounded by one file's
pickle (torch) or mapping (safetensors) plus the tensors the caller holds,
however many shards the model has. Shards of a Hugging Face save follow the
module order, so loading in that order opens each file about once.
"""

from __future__ import annotations

from pathlib import Path

import torch

from htsr_cli.checkpoints.base import Checkpoint, TensorInfo
from htsr_cli.checkpoints.order import module_order
from htsr_cli.checkpoints.safetensors_file import SafetensorsFile
from htsr_cli.checkpoints.torchfile import open_torch_file
from htsr_cli.errors import HtsrError


def open_file(path: Path) -> Checkpoint:
    """A reader for one weight file, chosen by its suffix."""
    if path.suffix.lower() == ".safetensors":
        return SafetensorsFile(path)
    return open_torch_file(path)


class ShardedCheckpoint(Checkpoint):
    """Tensors from `paths`, listed in module order, loaded from one open file at a time."""

    def __init__(
        self,
        source: str,
        paths: list[Path],
        *,
        config_dir: Path | None = None,
        sorted_storage: bool,
    ) -> None:
        self.source = source
        self.paths = list(paths)  # the weight files, in reading order
        self._config_dir = config_dir
        self._sorted_storage = sorted_storage
        self._current: tuple[Path, Checkpoint] | None = None
        self._infos: dict[str, TensorInfo] = {}
        self._shard_of: dict[str, Path] = {}
        self._ordered: list[TensorInfo] | None = None
        for path in paths:
            for info in self._shard(path).tensors():
                if info.key in self._shard_of:
                    raise HtsrError(
                        f"{source}: tensor {info.key!r} is stored in both "
                        f"{self._shard_of[info.key].name} and {path.name}; pass one of the files"
                    )
                self._infos[info.key] = info
                self._shard_of[info.key] = path
        if not self._infos:
            raise HtsrError(f"{source}: no tensors found")

    def tensors(self) -> list[TensorInfo]:
        if self._ordered is None:
            keys = module_order(
                list(self._infos), config_dir=self._config_dir, sorted_storage=self._sorted_storage
            )
            self._ordered = [self._infos[key] for key in keys]
        return list(self._ordered)

    def stored(self) -> list[TensorInfo]:
        return list(self._infos.values())  # shard by shard, each in its file's order

    def load(self, key: str) -> torch.Tensor:
        if key not in self._shard_of:
            raise self._missing(key)
        return self._shard(self._shard_of[key]).load(key)

    def close(self) -> None:
        if self._current is not None:
            self._current[1].close()
            self._current = None

    def _shard(self, path: Path) -> Checkpoint:
        if self._current is None or self._current[0] != path:
            self.close()
            self._current = (path, open_file(path))
        return self._current[1]
