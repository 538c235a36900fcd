"""One `.safetensors` file: an 8-byte length, a JSON header of names, shapes,
dtypes and byte ranges, then raw bytes.

Listing reads the header alone (`read_header`: one small read, no mapping), so
a process that needs no tensor of a file never opens it, which is what lets
each rank of a distributed run open only its own shards. Loading opens the file
with `safe_open`, which maps it and validates the whole layout, and each
`get_tensor` reads one tensor.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from htsr_cli.checkpoints.base import Checkpoint, TensorInfo
from htsr_cli.errors import HtsrError

# safetensors dtype names -> torch dtype attribute names. Newer torch dtypes
# are looked up by name so an older torch simply lacks them.
_DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
}


# safetensors refuses larger headers; checked before the header is read into memory.
MAX_HEADER_BYTES = 100_000_000


def torch_dtype(name: str) -> torch.dtype | None:
    attribute = _DTYPE_NAMES.get(name)
    return getattr(torch, attribute, None) if attribute else None


def _damaged(path: Path, detail: str) -> HtsrError:
    return HtsrError(f"{path}: is truncated or not a valid safetensors file ({detail})")


def read_header(path: Path) -> list[TensorInfo]:
    """The tensors of a safetensors file from its header alone, sorted by key (as `safe_open` lists them).

    Every size the header claims is checked against the file before use: the
    header length before it is read, and each tensor's byte range against its
    shape and dtype and the file's length, so a truncated download is named
    here rather than when its tensors are reached.
    """
    try:
        with open(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _damaged(path, f"{file_size} bytes, shorter than the 8-byte header length")
            header_size = int.from_bytes(prefix, "little")
            if header_size > MAX_HEADER_BYTES or 8 + header_size > file_size:
                raise _damaged(path, f"header of {header_size} bytes in a file of {file_size}")
            header = json.loads(handle.read(header_size))
    except OSError as error:
        raise HtsrError(f"{path}: cannot read ({error.strerror or error})") from error
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise _damaged(path, f"header is not JSON: {error}") from error
    if not isinstance(header, dict):
        raise _damaged(path, "header is not a JSON object")
    infos, data_end = [], 0
    for key in sorted(name for name in header if name != "__metadata__"):
        info, end = _entry(path, key, header[key])
        data_end = max(data_end, end)
        infos.append(info)
    if 8 + header_size + data_end != file_size:
        raise _damaged(path, f"tensor data ends at byte {8 + header_size + data_end}, the file has {file_size}")
    return infos


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(path: Path, key: str, entry: object) -> tuple[TensorInfo, int]:
    """One header entry as a TensorInfo and where its bytes end, checked against its shape and dtype."""
    shape = entry.get("shape") if isinstance(entry, dict) else None
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    stored = entry.get("dtype") if isinstance(entry, dict) else None
    if not (
        isinstance(stored, str)
        and isinstance(shape, list)
        and all(_is_count(size) for size in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_count(offset) for offset in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise _damaged(path, f"malformed header entry for {key!r}")
    dtype = torch_dtype(stored)
    if dtype is None:
        raise HtsrError(
            f"{path}: tensor {key!r} has dtype {stored}, which this version of torch cannot represent"
        )
    if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
        raise _damaged(path, f"tensor {key!r} of shape {shape} {stored} claims {offsets[1] - offsets[0]} bytes")
    return TensorInfo(key, tuple(shape), dtype), offsets[1]


class SafetensorsFile(Checkpoint):
    """One safetensors file, listed in its stored order (sorted by key)."""

    def __init__(self, path: Path) -> None:
        self.source = str(path)
        self._infos = read_header(path)
        try:
            self._handle = safe_open(str(path), framework="pt")
        except SafetensorError as error:
            raise _damaged(path, str(error)) from error
        except OSError as error:
            raise HtsrError(f"{path}: cannot read ({error.strerror or error})") from error
        self._keys = {info.key for info in self._infos}

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise self._missing(key)
        try:
            return self._handle.get_tensor(key)
        except SafetensorError as error:
            raise HtsrError(f"{self.source}: cannot read tensor {key!r} ({error})") from error

    def close(self) -> None:
        # Dropping the handle unmaps the file.
        self._handle = None
