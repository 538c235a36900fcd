"""What every checkpoint reader offers: a list of tensors (metadata only) and
one tensor at a time.

Readers never hold a model: `tensors()` reads shapes and dtypes without
touching tensor data, and `load()` brings in a single tensor that the caller
drops when done.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor, described without reading its data."""

    key: str  # after unwrapping containers and wrapper prefixes (no "module.")
    shape: tuple[int, ...]  # the logical shape (a quantized weight's unpacked shape)
    dtype: torch.dtype  # the dtype `load_for` returns (a quantized weight's dequantized dtype)
    # How the tensor is stored when that is not simply `dtype` ("gptq int4 g128",
    # "fp8-e4m3 block 128x128"); None for a plain tensor of `dtype`.
    storage: str | None = None
    # Why the reader cannot give this tensor as a dense matrix ("gguf IQ1_M: not
    # supported by gguf 0.19.0", "sparse tensor (sparse_coo), not supported");
    # such a weight is listed, and reported as skipped with this reason.
    unreadable: str | None = None

    @property
    def storage_label(self) -> str:
        """What a report says about how the weight was stored: the format, or the dtype's name."""
        return self.storage or str(self.dtype).removeprefix("torch.")


class Checkpoint(ABC):
    """Weights from one source (a file, a directory, a hub id, an object)."""

    source: str  # the path or id as the user gave it, for messages
    # The Hugging Face `model_type` of the architecture (config.json), when known:
    # some layouts depend on it (gpt-oss interleaves its fused gate/up experts).
    model_type: str | None = None

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

    def load_for(self, key: str, move: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The logical tensor of `key`, with its stored data passed through `move` first.

        `move` takes a stored tensor to where the work happens (the solver's
        device, in its stored dtype). A plain tensor is loaded and moved; a
        reader of packed formats overrides this to move the packed parts and
        decode them there, so dequantization runs on the device and only one
        decoded matrix exists at a time.
        """
        return move(self.load(key))

    def format_info(self) -> dict[str, object] | None:
        """What the file format says about the whole checkpoint (a GGUF's architecture
        and file type, a quantization method); None for plain weights."""
        return None

    def listing_reads(self) -> str:
        """What listing the tensors read from disk (`htsr describe` says it): headers only,
        a torch file's pickle, or a whole legacy file. Readers of files override this."""
        return "nothing from disk (the weights are in memory)"

    @abstractmethod
    def close(self) -> None:
        """Release open files and mappings."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _missing(self, key: str) -> KeyError:
        return KeyError(f"{self.source}: no tensor named {key!r}")


class RelistedCheckpoint(Checkpoint):
    """`inner` with its listing rewritten: some tensors stand in for stored ones,
    some stored ones are hidden. Subclasses say how (`relist`) and load what they
    added (`load_for`); everything else is `inner`'s."""

    def __init__(self, inner: Checkpoint) -> None:
        self.source = inner.source
        self.model_type = inner.model_type
        self._inner = inner

    @abstractmethod
    def relist(self, infos: list[TensorInfo]) -> list[TensorInfo]:
        """`inner`'s listing (in either order) as this checkpoint lists it."""

    def tensors(self) -> list[TensorInfo]:
        return self.relist(self._inner.tensors())

    def stored(self) -> list[TensorInfo]:
        return self.relist(self._inner.stored())

    def load(self, key: str) -> torch.Tensor:
        return self.load_for(key, lambda tensor: tensor)

    @abstractmethod
    def load_for(self, key: str, move: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor: ...

    def format_info(self) -> dict[str, object] | None:
        return self._inner.format_info()

    def listing_reads(self) -> str:
        return self._inner.listing_reads()

    def close(self) -> None:
        self._inner.close()
