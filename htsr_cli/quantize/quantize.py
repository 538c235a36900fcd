"""`htsr quantize` as a library call: a bits plan applied with round-to-nearest, written as compressed-tensors.

    htsr.bits/1 plan -> per matrix: RTN at its width (rtn.py) -> pack-quantized parts (compressed.py)
                     -> the Hugging Face directory again, config.json with its quantization_config

The input is a Hugging Face directory of safetensors weights in a float dtype.
Matrices planned at 1..8 bits are quantized; at 16 bits they stay as stored.
The output directory is written atomically (pruning/layout.py), one matrix in
memory at a time, with OUT/htsr-quantize.json (`htsr.quantize/1`): per matrix
its width and the relative error ||W - W'|| / ||W|| of its quantization.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from htsr_cli import __version__
from htsr_cli.allocations.bits import MAX_BITS
from htsr_cli.allocations.bits import SCHEMA as PLAN_SCHEMA
from htsr_cli.checkpoints import open_checkpoint
from htsr_cli.checkpoints.safetensors_file import read_header
from htsr_cli.checkpoints.sharded import ShardedCheckpoint
from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.io import write_atomic
from htsr_cli.pruning.layout import (
    copy_files, manifest, output_checks, plan_copies, source_directory, staged_output, write_replaced_safetensors,
)
from htsr_cli.quantize.compressed import compressed_parts, part_layout, quantization_config
from htsr_cli.quantize.rtn import rtn_dequantize, rtn_quantize
from htsr_cli.results.documents import dumps_json
from htsr_cli.settings import ProgressCallback

SCHEMA = "htsr.quantize/1"
RECORD = "htsr-quantize.json"
METHODS = ("rtn",)
PACKED_MAX_BITS = 8  # pack-quantized holds 1..8-bit codes
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_SUFFIX = ".safetensors.index.json"


@dataclass(frozen=True)
class QuantizeSettings:
    """How `htsr quantize` applies a plan: the method, the grid, the group size (None: the plan's)."""

    plan: Path
    method: str = "rtn"
    symmetric: bool = True
    group_size: int | None = None  # 0: one scale per output row
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidSetting("method", self.method, f"must be one of {', '.join(METHODS)} (GPTQ: export a recipe for llm-compressor with `htsr allocate bits -f llm-compressor`)")
        if self.group_size is not None and (isinstance(self.group_size, bool) or self.group_size < 0):
            raise InvalidSetting("group_size", self.group_size, "must be a whole number of columns, 0 for one scale per row")


def read_bits_plan(path: Path) -> dict[str, Any]:
    """An `htsr.bits/1` file, its entries checked: each a tensor name and a width (or none)."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HtsrError(f"--plan {path}: no such file (write one with `htsr allocate bits ... -f json -o {path}`)") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise HtsrError(f"--plan {path}: not a readable JSON file ({error})") from None
    if not isinstance(document, dict) or document.get("schema") != PLAN_SCHEMA:
        raise HtsrError(f"--plan {path}: not an {PLAN_SCHEMA} file (from `htsr allocate bits -f json`)")
    layers = document.get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise HtsrError(f"--plan {path}: 'layers' must be a list of objects")
    seen = set()
    for index, layer in enumerate(layers):
        key, bits = layer.get("tensor"), layer.get("bits")
        if not isinstance(key, str):
            raise HtsrError(f"--plan {path}: layers[{index}] has no 'tensor' name")
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS):
            raise HtsrError(f"--plan {path}: {key!r} has bits {bits!r}, expected a whole number in 1..{MAX_BITS}")
        if key in seen:
            raise HtsrError(f"--plan {path}: {key!r} is listed twice")
        seen.add(key)
    if not any(layer.get("bits") is not None for layer in layers):
        raise HtsrError(f"--plan {path}: no layer has a width")
    return document


def quantize_checkpoint(
    source: str, output: str | Path, settings: QuantizeSettings, progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """Quantize `source` (a Hugging Face directory or cached hub id) by the plan into the directory `output`.

    Raises `HtsrError` for a user's mistake before anything is written; on any
    failure or interruption `output` is left as it was.
    """
    output = Path(output)
    plan = read_bits_plan(settings.plan)
    group_size = plan_group_size(plan, settings)
    checkpoint = open_checkpoint(source)
    with closing(checkpoint):
        root = _source_directory(source, checkpoint)
        chosen = _chosen(plan, checkpoint, settings, group_size)
        earlier = output_checks(output, [root, settings.plan], settings.overwrite, RECORD, SCHEMA)
        copies = plan_copies(root, checkpoint.paths, source)
        errors: dict[str, float] = {}
        total = sum(1 for item in chosen.values() if item["quantize"])
        with staged_output(output, earlier) as staging:
            done = 0
            for path in checkpoint.paths:
                shard = {info.key for info in read_header(path)}
                mine = {key: item for key, item in chosen.items() if key in shard and item["quantize"]}
                layouts = {key: item["layout"] for key, item in mine.items()}

                def replace(key: str, load: Callable[[], torch.Tensor], mine=mine) -> dict[str, torch.Tensor]:
                    nonlocal done
                    if progress is not None:
                        progress(done, total, key)
                    done += 1
                    parts, errors[key] = _quantized(key, load(), mine[key]["bits"], group_size, settings.symmetric)
                    return parts

                write_replaced_safetensors(path, staging / path.name, layouts, replace)
            copied = copy_files(copies, staging)
            _write_config(staging, chosen, group_size, settings.symmetric)
            _rewrite_index(staging, chosen)
            document = _record(source, output, settings, group_size, chosen, errors)
            written = sorted({*(path.name for path in checkpoint.paths), *copied})
            document["files"] = {
                "weights": [path.name for path in checkpoint.paths], "copied": copied, "left_out": copies.left_out,
                "written": manifest(staging, written),  # what a later --overwrite may delete
            }
            write_atomic(staging / RECORD, dumps_json(document))
    return document


def plan_group_size(plan: dict[str, Any], settings: QuantizeSettings) -> int:
    if settings.group_size is not None:
        return settings.group_size
    planned = (plan.get("settings") or {}).get("group_size")
    if isinstance(planned, bool) or not isinstance(planned, int) or planned < 0:
        raise HtsrError(f"--plan {settings.plan}: has no group size; pass --group-size")
    return planned


def _source_directory(source: str, checkpoint) -> Path:
    """The Hugging Face directory whose files the output copies (a hub id: its cached snapshot)."""
    if checkpoint.format_info() is not None:
        described = checkpoint.format_info().get("format", "quantized")
        raise HtsrError(f"{source}: is already quantized ({described}); htsr quantize starts from float weights")
    if not isinstance(checkpoint, ShardedCheckpoint) or Path(source).is_file():
        raise HtsrError(f"{source}: htsr quantize needs a Hugging Face directory (config.json beside safetensors weights)")
    root = source_directory(source, checkpoint.paths)  # not None: a single file was refused above
    if not (root / "config.json").is_file():
        raise HtsrError(f"{source}: has no config.json; compressed-tensors keeps its settings there")
    other = [path.name for path in checkpoint.paths if path.suffix.lower() != ".safetensors"]
    if other:
        raise HtsrError(f"{source}: weights in {other[0]}; htsr quantize reads safetensors files")
    return root


def _chosen(plan: dict[str, Any], checkpoint, settings: QuantizeSettings, group_size: int) -> dict[str, dict[str, Any]]:
    """The planned matrices as found in the checkpoint, each checked and with its stored layout."""
    infos = {info.key: info for info in checkpoint.tensors()}
    chosen = {}
    for entry in plan["layers"]:
        key, bits = entry["tensor"], entry.get("bits")
        if bits is None:
            continue
        where = f"--plan {settings.plan}: {key!r}"
        info = infos.get(key)
        if info is None:
            raise HtsrError(f"{where} is not in {checkpoint.source} (a plan for another model?)")
        if entry.get("params") is not None and entry["params"] != math.prod(info.shape):
            raise HtsrError(f"{where} has {entry['params']} parameters in the plan but {math.prod(info.shape)} in the checkpoint (a plan for another model?)")
        if PACKED_MAX_BITS < bits < MAX_BITS:
            raise HtsrError(f"{where} is planned at {bits} bits; compressed-tensors packs 1..{PACKED_MAX_BITS} bits, and 16 leaves a layer as stored")
        quantize = bits <= PACKED_MAX_BITS
        if quantize and entry.get("kind") == "embedding":
            # compressed-tensors can pack one, but transformers then fails to build the model.
            raise HtsrError(f"{where} is an embedding planned at {bits} bits; transformers cannot load a compressed "
                            "embedding (plan without --embedding-bits)")
        if quantize:
            _check_quantizable(where, info, bits, group_size, settings.symmetric)
        prefix = key.removesuffix("weight")
        chosen[key] = {
            "tensor": key,
            "params": math.prod(info.shape),
            "bits": bits,
            "quantize": quantize,
            "layout": part_layout(prefix, info.shape, bits, group_size, settings.symmetric, info.dtype) if quantize else None,
        }
    return chosen


def _check_quantizable(where: str, info, bits: int, group_size: int, symmetric: bool) -> None:
    if not info.key.endswith(".weight") or len(info.shape) != 2:
        raise HtsrError(f"{where} is a {len(info.shape)}-D tensor; compressed-tensors quantizes the weight of a Linear layer")
    if info.dtype not in FLOAT_DTYPES:
        raise HtsrError(f"{where} is stored as {info.storage_label}; htsr quantize reads float32, float16 or bfloat16 weights")
    if group_size and info.shape[1] % group_size:
        raise HtsrError(
            f"{where} has {info.shape[1]} input columns, not a multiple of --group-size {group_size}; "
            "choose a group size that divides every planned matrix's columns, or 0 for one scale per row"
        )
    if bits == 1 and symmetric:
        raise HtsrError(f"{where} is planned at 1 bit, whose symmetric grid is {{-2 max|w|, 0}}; pass --asymmetric")


def _quantized(key: str, weight: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> tuple[dict[str, torch.Tensor], float]:
    """The compressed parts of one matrix and the relative error of its quantization."""
    if not torch.isfinite(weight).all():
        raise HtsrError(f"{key}: has NaN or infinite weights; they have no nearest code")
    quantized = rtn_quantize(weight, bits, group_size, symmetric, weight.dtype)
    original = weight.to(torch.float32)
    norm = float(torch.linalg.vector_norm(original, dtype=torch.float64))
    error = float(torch.linalg.vector_norm(original - rtn_dequantize(quantized), dtype=torch.float64))
    return compressed_parts(key.removesuffix("weight"), quantized), (error / norm if norm else 0.0)


def _write_config(staging: Path, chosen: dict[str, dict[str, Any]], group_size: int, symmetric: bool) -> None:
    config = json.loads((staging / "config.json").read_text())
    modules: dict[int, list[str]] = {}
    for item in chosen.values():
        if item["quantize"]:
            modules.setdefault(item["bits"], []).append(item["tensor"].removesuffix(".weight"))
    config["quantization_config"] = quantization_config(modules, group_size, symmetric)
    write_atomic(staging / "config.json", json.dumps(config, indent=2) + "\n")


def _rewrite_index(staging: Path, chosen: dict[str, dict[str, Any]]) -> None:
    """A sharded directory's index maps each new part to the shard of the weight it replaced."""
    for index in staging.glob("*" + INDEX_SUFFIX):
        document = json.loads(index.read_text())
        weight_map = document.get("weight_map")
        if not isinstance(weight_map, dict):
            continue
        for key, item in chosen.items():
            if item["quantize"] and key in weight_map:
                shard = weight_map.pop(key)
                weight_map.update(dict.fromkeys(item["layout"], shard))
        document["weight_map"] = dict(sorted(weight_map.items()))
        write_atomic(index, json.dumps(document, indent=2) + "\n")


def _record(source, output, settings: QuantizeSettings, group_size: int, chosen, errors) -> dict[str, Any]:
    layers = []
    for key, item in chosen.items():
        layers.append({
            "tensor": key,
            "params": item["params"],
            "bits": item["bits"],
            "quantized": item["quantize"],
            "relative_error": errors.get(key),
            "note": None if item["quantize"] else f"{item['bits']} bits: left as stored",
        })
    quantized = [layer for layer in layers if layer["quantized"]]
    params = sum(layer["params"] for layer in layers)
    return {
        "schema": SCHEMA,
        "htsr_version": __version__,
        "checkpoint": source,
        "output": str(output),
        "settings": {
            "plan": str(settings.plan),
            "method": settings.method,
            "symmetric": settings.symmetric,
            "group_size": group_size,
            "format": "compressed-tensors pack-quantized",
        },
        "layers": layers,
        "summary": {
            "quantized": len(quantized),
            "kept": len(layers) - len(quantized),
            "params": params,
            "weighted_mean_bits": sum(layer["params"] * layer["bits"] for layer in layers) / params,
            "max_relative_error": max((layer["relative_error"] for layer in quantized), default=None),
        },
    }
