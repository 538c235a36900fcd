"""`htsr convert`: a GGUF file (llama.cpp) dequantized into a Hugging Face safetensors directory,
which `htsr prune`, `htsr quantize` and `htsr eval` then read like any other.

The dequantization is transformers' own GGUF loader (`from_pretrained(dir,
gguf_file=...)`), so the architectures it knows are the ones supported. It
builds the whole float32 model in memory (there is no matrix-at-a-time path
through it); the directory is written staged and renamed into place like
prune's output, with a record (htsr-convert.json) that lets --overwrite
replace exactly what it wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from htsr_cli import __version__
from htsr_cli.errors import HtsrError
from htsr_cli.io import write_atomic
from htsr_cli.pruning.layout import manifest, output_checks, staged_output
from htsr_cli.results.documents import dumps_json

SCHEMA = "htsr.convert/1"
RECORD = "htsr-convert.json"
WEIGHTS = "model.safetensors"


def convert_gguf(source: str, output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Dequantize the GGUF file `source` into the new or empty directory `output` (float32 safetensors,
    config.json, and the tokenizer when transformers can rebuild it); `overwrite` replaces an earlier
    `htsr convert` output. Returns the record written there."""
    output = Path(output)
    path = Path(source)
    if path.suffix.lower() != ".gguf":
        raise HtsrError(f"{source}: htsr convert reads a .gguf file (llama.cpp); other checkpoints need no conversion")
    if not path.is_file():
        raise HtsrError(f"{source}: no such file" if not path.exists() else f"{source}: not a regular file")
    earlier = output_checks(output, [path], overwrite, record=RECORD, schema=SCHEMA)
    model, tokenizer = _load(path)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 from here on
    from safetensors.torch import save_file

    with staged_output(output, earlier) as staging:
        save_file(_untied(model.state_dict()), str(staging / WEIGHTS), metadata={"format": "pt"})
        config.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        written = sorted(str(item.relative_to(staging)) for item in staging.rglob("*") if item.is_file())
        record = {
            "schema": SCHEMA,
            "htsr_version": __version__,
            "checkpoint": str(source),
            "output": str(output),
            "architecture": config.model_type,
            "parameters": sum(parameter.numel() for parameter in model.parameters()),
            "dtype": "float32",
            "tokenizer": tokenizer is not None,
            "files": {"written": manifest(staging, written)},
        }
        write_atomic(staging / RECORD, dumps_json(record))
    return record


def _untied(state: dict[str, Any]) -> dict[str, Any]:
    """Each tensor once, under its first name: a tied lm_head shares the embeddings' storage and is
    stored as `model.embed_tokens.weight` alone, as transformers saves it (config.json says it is tied)."""
    kept, seen = {}, set()
    for name, tensor in state.items():
        storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if storage not in seen:
            seen.add(storage)
            kept[name] = tensor.contiguous()
    return kept


def _load(path: Path) -> tuple[Any, Any]:
    """The float32 model transformers builds from the GGUF file, and its tokenizer (None when it has none)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except ImportError as error:  # transformers names the package it misses (gguf, accelerate)
        missing = (str(error).strip().splitlines() or ["accelerate"])[0]
        raise HtsrError(
            f"{path}: transformers' GGUF loader needs a package that is not installed ({missing}); "
            'pip install accelerate (or, in a clone of htsr, pip install ".[convert]")'
        ) from None
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise HtsrError(f"{path}: transformers cannot read this GGUF file ({reason})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError, ImportError):
        tokenizer = None  # weights without a tokenizer still prune; eval then says it needs one
    return model, tokenizer
