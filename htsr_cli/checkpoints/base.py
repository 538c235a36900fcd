"""What every checkpoint reader offers: a list of tensors (metadata only) and
one tensor at a time.

Readers never hold a model: `tensors()` reads shapes and dtypes without
touching tensor data, and `load()` brings in a single tensor that the caller
drops when done.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor, described without reading its data."""

    key: str  # after unwrapping containers and wrapper prefixes (no "module.")
    shape: tuple[int, ...]
    dtype: torch.dtype


class Checkpoint(ABC):
    """Weights from one source (a file, a directory, a hub id, an object)."""

    source: str  # the path or id as the user gave it, for messages

    @abstractmethod
    def tensors(self) -> list[TensorInfo]:
        """All tensors in module order (algorithms.md section 10), metadata only."""

    def stored(self) -> list[TensorInfo]:
        """The same tensors in the order they are stored: the cheapest order to
        read them in, and cheap to list (no architecture lookup)."""
        return self.tensors()

    @abstractmethod
    def load(self, key: str) -> torch.Tensor:
        """One tensor with its stored dtype, on the CPU (an in-memory module's
        tensors stay on their device). It may share memory with the source:
        read it, do not modify it."""

    @abstractmethod
    def close(self) -> None:
        """Release open files and mappings."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _missing(self, key: str) -> KeyError:
        return KeyError(f"{self.source}: no tensor named {key!r}")
