"""One `.safetensors` file: a JSON header of names, shapes and dtypes, then
raw bytes. `safe_open` parses the header and maps the file, so listing costs
nothing and each `get_tensor` reads one tensor.
"""

from __future__ import annotations

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


def torch_dtype(name: str) -> torch.dtype | None:
    attribute = _DTYPE_NAMES.get(name)
    return getattr(torch, attribute, None) if attribute else None


class SafetensorsFile(Checkpoint):
    """One safetensors file, listed in its stored order (sorted by key)."""

    def __init__(self, path: Path) -> None:
        self.source = str(path)
        try:
            self._handle = safe_open(str(path), framework="pt")
            self._infos = [self._info(key) for key in self._handle.keys()]
        except SafetensorError as error:
            raise HtsrError(
                f"{path}: is truncated or not a valid safetensors file ({error})"
            ) from error
        except OSError as error:
            raise HtsrError(f"{path}: cannot read ({error.strerror or error})") from error
        self._keys = {info.key for info in self._infos}

    def _info(self, key: str) -> TensorInfo:
        tensor_slice = self._handle.get_slice(key)
        stored = tensor_slice.get_dtype()
        dtype = torch_dtype(stored)
        if dtype is None:
            raise HtsrError(
                f"{self.source}: tensor {key!r} has dtype {stored}, "
                "which this version of torch cannot represent"
            )
        return TensorInfo(key, tuple(tensor_slice.get_shape()), dtype)

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
