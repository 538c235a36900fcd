"""Weights in one or more files (a single file is one shard), read one file at a time.

At most two files are open at any moment, so memory stays bounded by two
files' pickles (torch) or mappings (safetensors) plus the tensors the caller
holds, however many shards the model has. Shards of a Hugging Face save follow
the module order, so loading in that order opens each file once; two, because
a decoder block can straddle a shard boundary and the solver reads a block's
matrices grouped by shape, going back and forth between the two files.

safetensors shards are listed from their headers and opened only when one of
their tensors is loaded: a rank of a distributed run that loads none of a
shard's tensors never opens (maps) it. A torch file has no header to read, so
listing one unpickles it (memory-mapped: no tensor data is read).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from htsr_cli.checkpoints.base import Checkpoint, TensorInfo
from htsr_cli.checkpoints.order import config_model_type, module_order
from htsr_cli.checkpoints.safetensors_file import SafetensorsFile, read_header
from htsr_cli.checkpoints.torchfile import open_torch_file
from htsr_cli.errors import HtsrError


OPEN_FILES = 2


def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors"


def open_file(path: Path) -> Checkpoint:
    """A reader for one weight file, chosen by its suffix."""
    if _is_safetensors(path):
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
        self.model_type = config_model_type(config_dir) if config_dir is not None else None
        self._sorted_storage = sorted_storage
        self._open: OrderedDict[Path, Checkpoint] = OrderedDict()  # least recently used first
        self._infos: dict[str, TensorInfo] = {}
        self._shard_of: dict[str, Path] = {}
        self._ordered: list[TensorInfo] | None = None
        self._torch_reads: dict[Path, str] = {}  # what listing each torch file read
        for path in paths:
            if _is_safetensors(path):
                listed = read_header(path)
            else:
                listed = self._shard(path).tensors()
                self._torch_reads[path] = self._shard(path).listing_reads()
            for info in listed:
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

    def listing_reads(self) -> str:
        headers = sum(1 for path in self.paths if _is_safetensors(path))
        files = f"each of the {headers} safetensors files" if headers > 1 else "the safetensors file"
        parts = [f"the header of {files}; no tensor data"] if headers else []
        parts += [self._torch_reads[path] for path in self.paths if not _is_safetensors(path)]
        return "; ".join(parts)

    def load(self, key: str) -> torch.Tensor:
        if key not in self._shard_of:
            raise self._missing(key)
        return self._shard(self._shard_of[key]).load(key)

    def close(self) -> None:
        while self._open:
            self._open.popitem(last=False)[1].close()

    def _shard(self, path: Path) -> Checkpoint:
        if path in self._open:
            self._open.move_to_end(path)
        else:
            if len(self._open) >= OPEN_FILES:
                self._open.popitem(last=False)[1].close()
            self._open[path] = open_file(path)
        return self._open[path]
