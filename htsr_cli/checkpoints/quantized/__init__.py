"""Quantized and packed weights, read as the float matrices they stand for.

`with_quantized_weights` looks at a checkpoint's tensor names, dtypes and
shapes (and its `quantization_config`, when there is one) and, when it finds
packed weights, returns a checkpoint that lists each as one logical float32
tensor and dequantizes it where the pipeline moves it (the solver's device),
one matrix at a time. One module per format family:

    fp8.py                 FP8 with per-tensor / per-channel / group / block scales (DeepSeek-V3)
    compressed_tensors.py  pack-quantized and int-quantized (llm-compressor)
    gptq.py                GPTQ (2/3/4/8 bits, act-order) and AWQ
    bitsandbytes.py        LLM.int8 and NF4 / FP4 with double quantization
    mxfp4.py               MXFP4 blocks and e8m0 scales (gpt-oss)
    gguf_file.py           GGUF files, read with the `gguf` package (not a wrapper: a reader)
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch

from htsr_cli.checkpoints.base import Checkpoint
from htsr_cli.checkpoints.quantized.bitsandbytes import find_bitsandbytes
from htsr_cli.checkpoints.quantized.compressed_tensors import find_compressed
from htsr_cli.checkpoints.quantized.fp8 import find_fp8
from htsr_cli.checkpoints.quantized.gptq import find_gptq_awq
from htsr_cli.checkpoints.quantized.mxfp4 import find_mxfp4
from htsr_cli.checkpoints.quantized.packed import ImpossibleParts, PackedWeight, QuantizedCheckpoint, StoredTensors
from htsr_cli.checkpoints.sources import SIDECAR_FILES, read_sidecar
from htsr_cli.errors import HtsrError

FINDERS = (find_gptq_awq, find_compressed, find_bitsandbytes, find_fp8, find_mxfp4)
# Metadata tensors read while listing (a bnb quant_state, a weight_shape) are
# tiny; a file claiming a larger one is damaged or hostile.
SMALL_TENSOR_BYTES = 1 << 20
# Where quantizers keep their settings: transformers' config.json, then the
# files AutoGPTQ and AutoAWQ write beside the weights (they name no method).
CONFIG_FILES = tuple(zip(SIDECAR_FILES, (None, "gptq", "awq")))


def quantization_config(directory: Path | None) -> dict:
    """The checkpoint's quantization settings, {} when it has none."""
    if directory is None:
        return {}
    for name, method in CONFIG_FILES:
        data = read_sidecar(directory, name)  # bounded, regular files only; None when absent
        if data is None:
            continue
        if method is None:
            config = data.get("quantization_config")
            if isinstance(config, dict):
                return config
            continue
        return {"quant_method": method, **data}
    return {}


def with_quantized_weights(checkpoint: Checkpoint, config_dir: Path | None) -> Checkpoint:
    """`checkpoint` itself when nothing in it is packed, else a view that decodes packed weights."""
    infos = {info.key: info for info in checkpoint.stored()}
    config = quantization_config(config_dir)

    def read_small(key: str) -> torch.Tensor:
        info = infos[key]
        size = math.prod(info.shape) * torch.empty((), dtype=info.dtype).element_size()
        if size > SMALL_TENSOR_BYTES:
            raise HtsrError(
                f"{checkpoint.source}: metadata tensor {key!r} claims {size} bytes "
                f"(at most {SMALL_TENSOR_BYTES} expected); the file is damaged"
            )
        return checkpoint.load(key)

    stored = StoredTensors(infos, config, read_small)
    weights: list[PackedWeight] = []
    claimed: set[str] = set()
    for finder in FINDERS:
        try:
            found = finder(stored)
        except ImpossibleParts as error:
            raise HtsrError(f"{checkpoint.source}: {error}") from None
        for weight in found:
            keys = {weight.main, *weight.parts.values(), *weight.hidden}
            if keys & claimed:  # an earlier, more specific format took these tensors
                continue
            claimed |= keys
            weights.append(weight)
    if not weights:
        return checkpoint
    storages = Counter(weight.info.storage_label for weight in weights)
    method = config.get("quant_method") or weights[0].info.storage_label.split()[0]
    info = {"format": str(method), "packed_weights": len(weights), "storage": dict(sorted(storages.items()))}
    return QuantizedCheckpoint(checkpoint, weights, info)
