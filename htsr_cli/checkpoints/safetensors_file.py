"""One `.safetensors` file: an 8-byte length, a JSON header of names, shapes,
dtypes and byte ranges, then raw bytes.

Listing reads the header alone (`read_header`: one small read, no mapping), so
a process that needs no tensor of a file never opens it, which is what lets
each rank of a distributed run open only its own shards. Loading reads one
tensor's bytes, whose size the checked header gives, into a fresh buffer
(`SafetensorsFile.load`). The file is never mapped: the pages of a mapped file
that were read count in the process's resident memory until it is unmapped,
which made peak RSS grow with the shards open at once.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import threading
from pathlib import Path

import torch

from htsr_cli.checkpoints.base import Checkpoint, TensorInfo
from htsr_cli.errors import HtsrError, brief
from htsr_cli.io import TENSORS_PER_FILE, open_input, os_reason

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


# Bits per element of every safetensors dtype, for checking a header's claimed sizes.
_DTYPE_BITS = {
    "F64": 64, "F32": 32, "F16": 16, "BF16": 16, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U64": 64, "U32": 32, "U16": 16, "U8": 8,
    "BOOL": 8, "C64": 64, "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4,
}
_HEADER_LENGTH = struct.Struct("<Q")
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit


def check_safetensors_header(path: Path) -> tuple[dict, int]:
    """Refuse a file whose header claims tensors the file does not hold, before anything is mapped.

    Checks what the format promises: a JSON object of entries with a dtype, a
    shape of non-negative integers, and data offsets [begin, end] inside the
    data section; each entry's bytes (shape x dtype) equal to end - begin; no
    two tensors sharing bytes. Every message names the tensor. Returns the
    header and the size of the data section.
    """
    try:
        with os.fdopen(open_input(path), "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(_HEADER_LENGTH.size)
            if len(prefix) < _HEADER_LENGTH.size:
                raise _invalid(path, f"{size} bytes")
            (length,) = _HEADER_LENGTH.unpack(prefix)
            if length > min(MAX_HEADER_BYTES, size - _HEADER_LENGTH.size):
                raise _invalid(path, f"its header claims {length:,} bytes of a {size:,}-byte file")
            raw = handle.read(length)
    except OSError as error:
        raise HtsrError(f"{path}: {os_reason(error)}") from None
    # Counted in the raw bytes first (each entry has one data_offsets), so a header
    # of a million empty tensors is refused before it is parsed into a million dicts.
    _check_tensor_count(path, raw.count(b'"data_offsets"'))
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise _invalid(path, f"its header is not JSON: {brief(error)}") from None
    if not isinstance(header, dict):
        raise _invalid(path, "its header is not a JSON object")
    _check_tensor_count(path, len(header) - ("__metadata__" in header))
    data_bytes = size - _HEADER_LENGTH.size - length
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        spans.append((*_checked_span(path, key, entry, data_bytes), key))
    spans.sort()
    for (begin, end, key), (next_begin, _, next_key) in zip(spans, spans[1:]):
        if next_begin < end:
            raise _invalid(path, f"tensors {key!r} and {next_key!r} share bytes")
    return header, data_bytes


def read_header(path: Path) -> list[TensorInfo]:
    """The tensors of a safetensors file from its header alone, sorted by key (as `safe_open` lists them).

    Every size the header claims is checked against the file first
    (`check_safetensors_header`), and the data must end where the file does, so
    a truncated download is named here rather than when its tensors are reached.
    """
    return read_layout(path)[0]


def read_layout(path: Path) -> tuple[list[TensorInfo], dict[str, tuple[int, int]]]:
    """(`read_header`'s tensors, each tensor's [begin, end) as positions in the file)."""
    header, data_bytes = check_safetensors_header(path)
    data_start = os.path.getsize(path) - data_bytes
    infos, spans, data_end = [], {}, 0
    for key in sorted(name for name in header if name != "__metadata__"):
        entry = header[key]
        stored = entry.get("dtype")
        dtype = torch_dtype(stored) if isinstance(stored, str) else None
        if dtype is None:
            raise HtsrError(
                f"{path}: tensor {key!r} has dtype {stored}, which this version of torch cannot represent"
            )
        infos.append(TensorInfo(key, tuple(entry["shape"]), dtype))
        begin, end = entry["data_offsets"]
        spans[key] = (data_start + begin, data_start + end)
        data_end = max(data_end, end)
    if data_end != data_bytes:
        raise _invalid(path, f"its tensor data ends {data_bytes - data_end:,} bytes before the file does")
    return infos, spans


def _checked_span(path: Path, key: str, entry: object, data_bytes: int) -> tuple[int, int]:
    """[begin, end) of one header entry's bytes, after checking them against its shape and dtype."""
    where = f"tensor {key!r}"
    if not isinstance(entry, dict):
        raise _invalid(path, f"{where} has a header entry that is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise _invalid(path, f"{where} has shape {shape!r}, not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets):
        raise _invalid(path, f"{where} has data_offsets {offsets!r}, not a pair of non-negative integers")
    begin, end = offsets
    if not begin <= end <= data_bytes:
        raise _invalid(path, f"{where} has its data at [{begin:,}, {end:,}) but the file holds {data_bytes:,} bytes of data")
    bits = _DTYPE_BITS.get(dtype) if isinstance(dtype, str) else None
    if bits is not None:
        claimed = math.prod(shape) * bits  # Python integers: no overflow however large the shape
        if claimed != 8 * (end - begin):
            dims = "x".join(str(n) for n in shape) or "scalar"
            raise _invalid(path, f"{where} claims {dims} {dtype} ({_size(claimed / 8)}) but its data holds {_size(end - begin)}")
    return begin, end


def _check_tensor_count(path: Path, count: int) -> None:
    if count > TENSORS_PER_FILE.value():
        raise HtsrError(f"{path}: its header lists {count:,} tensors, more than htsr reads from one file {TENSORS_PER_FILE.beyond()}")


def _invalid(path: Path, detail: str) -> HtsrError:
    return HtsrError(f"{path}: is truncated or not a valid safetensors file ({detail})")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _size(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    return ""


def torch_dtype(name: str) -> torch.dtype | None:
    attribute = _DTYPE_NAMES.get(name)
    return getattr(torch, attribute, None) if attribute else None


class SafetensorsFile(Checkpoint):
    """One safetensors file, listed in its stored order (sorted by key)."""

    def __init__(self, path: Path) -> None:
        self.source = str(path)
        self._infos, self._spans = read_layout(path)
        self._by_key = {info.key: info for info in self._infos}
        self._file = os.fdopen(open_input(path), "rb", buffering=0)
        self._reading = threading.Lock()  # seek + read as one step, whichever thread loads

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, key: str) -> torch.Tensor:
        info = self._by_key.get(key)
        if info is None:
            raise self._missing(key)
        begin, end = self._spans[key]
        data = torch.empty(end - begin, dtype=torch.uint8)  # a size the header check matched to the file
        view = memoryview(data.numpy())
        filled = 0
        try:
            with self._reading:
                self._file.seek(begin)
                while filled < len(view):
                    count = self._file.readinto(view[filled:])
                    if not count:
                        raise HtsrError(
                            f"{self.source}: cannot read tensor {key!r} (the file ends {len(view) - filled:,} "
                            "bytes short of its data: it changed after it was opened)"
                        )
                    filled += count
        except OSError as error:
            raise HtsrError(f"{self.source}: cannot read tensor {key!r} ({os_reason(error)})") from error
        if sys.byteorder != "little" and info.dtype.itemsize > 1:  # the format stores little-endian values
            data = data.view(-1, info.dtype.itemsize).flip(1).reshape(-1)
        return data.view(info.dtype).reshape(info.shape)

    def close(self) -> None:
        self._file.close()
