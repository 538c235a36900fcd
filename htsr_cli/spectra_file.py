"""Saving and reading back the eigenvalues behind a report (`--save-spectra`).

A spectra file is a safetensors file with one float64 tensor per analysed
layer, `esd/<name>` (the sorted pooled ESD), plus `farms/<name>` (the sorted
FARMS pool) when FARMS ran. `htsr report REPORT.json` reads it to draw the
plots without analysing the checkpoint again.

    save_spectra("run.spectra.safetensors", report.spectra)
    spectra = load_spectra("run.spectra.safetensors")  # name -> LayerSpectra
    report = load_report("run.json")
    attach_spectra(report, "run.spectra.safetensors")  # checks it fits, sets report.spectra
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from htsr_cli.analysis import LayerSpectra
from htsr_cli.checkpoints.safetensors_file import check_safetensors_header
from htsr_cli.errors import HtsrError
from htsr_cli.io import os_reason, require_regular_file, write_atomic
from htsr_cli.report import Report

SCHEMA = "htsr.spectra/1"
ESD_PREFIX = "esd/"
FARMS_PREFIX = "farms/"


def save_spectra(path: str | Path, spectra: Mapping[str, LayerSpectra]) -> None:
    """Write every layer's ESD (and FARMS pool) to one safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in spectra.items():
        tensors[ESD_PREFIX + name] = layer.esd.detach().cpu().contiguous()
        if layer.farms is not None:
            tensors[FARMS_PREFIX + name] = layer.farms.detach().cpu().contiguous()
    write_atomic(path, save(tensors, metadata={"schema": SCHEMA}))


def load_spectra(path: str | Path) -> dict[str, LayerSpectra]:
    """Read a file written by `save_spectra`: layer name -> LayerSpectra."""
    path = Path(path)
    require_regular_file(path)
    check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            schema = (handle.metadata() or {}).get("schema")
            if schema != SCHEMA:
                raise HtsrError(f"{path}: not an {SCHEMA} file (schema is {schema!r}); write one with `htsr analyze --save-spectra`")
            keys = list(handle.keys())
            tensors = {key: handle.get_tensor(key) for key in keys}
    except SafetensorError as error:
        raise HtsrError(f"{path}: cannot read spectra file ({error})") from None
    except OSError as error:
        raise HtsrError(f"{path}: {os_reason(error)}") from None
    for key, tensor in tensors.items():
        if tensor.dim() != 1 or not tensor.dtype.is_floating_point or not bool(torch.isfinite(tensor).all()):
            raise HtsrError(f"{path}: {key!r} is not a finite 1-D spectrum; the file is damaged")
    spectra = {
        key[len(ESD_PREFIX):]: LayerSpectra(tensor)
        for key, tensor in tensors.items()
        if key.startswith(ESD_PREFIX)
    }
    for key, tensor in tensors.items():
        name = key[len(FARMS_PREFIX):]
        if key.startswith(FARMS_PREFIX) and name in spectra:
            spectra[name].farms = tensor
    return spectra


def attach_spectra(report: Report, path: str | Path) -> None:
    """Load a spectra file into `report.spectra`, refusing one saved from another analysis."""
    spectra = load_spectra(path)
    for layer in report.layers:
        if not layer.analysed:
            continue
        found = spectra.get(layer.name)
        if found is None or found.esd.numel() != layer.num_evals:
            raise HtsrError(
                f"{path}: no spectrum of {layer.num_evals} eigenvalues for layer {layer.name!r}; "
                "was it saved by the same `htsr analyze --save-spectra` run as the report?"
            )
        if layer.alpha_farms is not None and found.farms is None:
            raise HtsrError(f"{path}: no FARMS spectrum for layer {layer.name!r}, but the report has alpha_farms")
    report.spectra = spectra
