"""GGUF files (llama.cpp), read with the `gguf` package, the llama.cpp project's own reader.

`GGUFReader` memory-maps the file and parses only the header, so listing costs
nothing; each tensor is dequantized on its own by `gguf.quants.dequantize`, the
package's reference decoder (numpy, on the CPU), then handed to the pipeline.
Every type that function decodes is read; any other is a skipped layer saying
so ("gguf Q8_K: not supported by gguf 0.19.0").

GGUF stores dimensions fastest-first (ne[0] = columns); htsr lists the usual
row-major shape. Names are GGUF's (`blk.3.ffn_down.weight`), so `blk.3` is the
block. llama.cpp's converter permutes the rows of llama-family q/k projections
for its rope kernel; `hf_row_order` undoes that for weight-level comparisons
(singular values do not change).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from pathlib import Path

import numpy as np
import torch

from htsr_cli.checkpoints.base import Checkpoint, TensorInfo
from htsr_cli.checkpoints.order import natural_order
from htsr_cli.errors import HtsrError, brief
from htsr_cli.io import os_reason

GGUF_MAGIC = b"GGUF"
INTEGER_TYPES = ("I8", "I16", "I32", "I64")
# Architectures whose q/k rows llama.cpp's converter permutes (LlamaModel.permute),
# as transformers' GGUF loader undoes it.
ROPE_PERMUTED_ARCHITECTURES = ("llama",)
_ROPE_PERMUTED = re.compile(r"^blk\.\d+\.attn_(q|k)\.weight$")
# Model order: embeddings, then the blocks by number, then the rest (final norm, output head).
_FIRST = ("token_embd", "position_embd", "token_types")
# How the reader's enum lookup reports a type id it does not know.
_UNKNOWN_TYPE = re.compile(r"(\d+)\)? is not a valid GGMLQuantizationType")


def is_gguf_file(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def gguf_version() -> str:
    return importlib.metadata.version("gguf")


@functools.cache
def _decodable(type_name: str) -> bool:
    """Whether this gguf version's `dequantize` handles the type (asked with one zero block)."""
    import gguf

    qtype = gguf.GGMLQuantizationType[type_name]
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    try:
        gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def unpermute_rope_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's rope permutation of a q or k projection.

    weight: [heads * head_dim, cols]; llama.cpp wrote rows (h, half, i) in the
    order (h, i, half); this puts them back -> [heads * head_dim, cols].
    """
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


class GgufCheckpoint(Checkpoint):
    """One GGUF file: tensors listed from its header, each dequantized when loaded."""

    def __init__(self, path: Path, source: str) -> None:
        import gguf

        self.source = source
        try:
            self._reader = gguf.GGUFReader(path)
        except OSError as error:
            raise HtsrError(f"{source}: cannot read ({os_reason(error)})") from error
        except Exception as error:  # the reader reports damage as ValueError, IndexError, KeyError, ...
            unknown = _UNKNOWN_TYPE.search(str(error))
            if unknown is not None:
                raise HtsrError(
                    f"{source}: a tensor has GGML type {unknown[1]}, which gguf {gguf_version()} does not know "
                    "(a damaged file, or one newer than the installed gguf package)"
                ) from None
            raise HtsrError(f"{source}: is truncated or not a valid GGUF file ({brief(error)})") from None
        self._tensors = {tensor.name: tensor for tensor in self._reader.tensors}
        self._infos = [self._info(tensor) for tensor in self._reader.tensors]
        if not self._infos:
            raise HtsrError(f"{source}: no tensors found")
        self._meta = self._metadata()

    def _field(self, name: str):
        field = self._reader.get_field(name)
        try:
            return field.contents() if field is not None else None
        except (ValueError, IndexError, UnicodeDecodeError):
            return None

    def _metadata(self) -> dict[str, object]:
        import gguf

        architecture = self._field("general.architecture")
        file_type = self._field("general.file_type")
        try:
            file_type_name = gguf.LlamaFileType(file_type).name if file_type is not None else None
        except ValueError:
            file_type_name = str(file_type)
        return {
            "format": "gguf",
            "architecture": architecture,
            "file_type": file_type_name,
            "gguf_version": self._field("GGUF.version"),
            "name": self._field("general.name"),
            "reader": f"gguf {gguf_version()}",
        }

    def _info(self, tensor) -> TensorInfo:
        shape = tuple(int(size) for size in reversed(tensor.shape.tolist()))
        type_name = tensor.tensor_type.name
        reason = None
        if type_name in INTEGER_TYPES:
            reason = f"gguf {type_name}: an integer tensor, not weights"
        elif not _decodable(type_name):
            reason = f"gguf {type_name}: not supported by gguf {gguf_version()}"
        return TensorInfo(tensor.name, shape, torch.float32, f"gguf {type_name}", unreadable=reason)

    def tensors(self) -> list[TensorInfo]:
        by_key = {info.key: info for info in self._infos}
        first = [key for key in by_key if key.split(".")[0] in _FIRST]
        blocks = [key for key in by_key if key.startswith("blk.")]
        rest = [key for key in by_key if key not in first and key not in blocks]
        return [by_key[key] for key in natural_order(first) + natural_order(blocks) + natural_order(rest)]

    def stored(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, key: str) -> torch.Tensor:
        import gguf

        tensor = self._tensors.get(key)
        if tensor is None:
            raise self._missing(key)
        info = next(info for info in self._infos if info.key == key)
        if info.unreadable:
            raise HtsrError(f"{self.source}: {key}: {info.unreadable}")
        qtype = tensor.tensor_type
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F64):
            values = np.array(tensor.data, dtype=np.float32)  # a copy: the mapping is read-only
        else:
            values = gguf.quants.dequantize(tensor.data, qtype)
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(info.shape))

    def rope_heads(self, key: str) -> int | None:
        """Heads whose rows llama.cpp permuted in this tensor (q: all heads, k: KV heads); None if untouched."""
        architecture = self._meta["architecture"]
        match = _ROPE_PERMUTED.match(key)
        if architecture not in ROPE_PERMUTED_ARCHITECTURES or match is None:
            return None
        heads = self._field(f"{architecture}.attention.head_count")
        kv_heads = self._field(f"{architecture}.attention.head_count_kv") or heads
        count = heads if match[1] == "q" else kv_heads
        return count if isinstance(count, int) and count > 0 else None

    def hf_row_order(self, key: str, weight: torch.Tensor) -> torch.Tensor:
        """`weight` (this file's tensor `key`) with rows in the Hugging Face model's order."""
        heads = self.rope_heads(key)
        if heads is None or weight.shape[0] % (2 * heads):
            return weight
        return unpermute_rope_rows(weight, heads)

    def format_info(self) -> dict[str, object]:
        return dict(self._meta)

    def listing_reads(self) -> str:
        return "the GGUF header and metadata; tensor data is memory-mapped, not read"

    def close(self) -> None:
        # Dropping the reader and its tensors' views unmaps the file.
        self._tensors = {}
        self._reader = None
