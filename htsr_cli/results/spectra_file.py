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
from safetensors.torch import save

from htsr_cli.results.report import LayerSpectra
from htsr_cli.checkpoints.safetensors_file import SafetensorsFile, check_safetensors_header
from htsr_cli.errors import HtsrError
from htsr_cli.io import require_regular_file, write_atomic
from htsr_cli.results.report import Report

SCHEMA = "htsr.spectra/1"
ESD_PREFIX = "esd/"
FARMS_PREFIX = "farms/"
SPECTRUM_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)  # what a spectrum can be read as


def save_spectra(path: str | Path, spectra: Mapping[str, LayerSpectra]) -> None:
    """Write every layer's ESD (and FARMS pool) to one safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in spectra.items():
        tensors[ESD_PREFIX + name] = layer.esd.detach().cpu().contiguous()
        if layer.farms is not None:
            tensors[FARMS_PREFIX + name] = layer.farms.detach().cpu().contiguous()
    write_atomic(path, save(tensors, metadata={"schema": SCHEMA}))


def load_spectra(path: str | Path) -> dict[str, LayerSpectra]:
    """Read a file written by `save_spectra`: layer name -> LayerSpectra.

    The header's claims are checked against the file before anything is read,
    and each spectrum is read into its own buffer (no mapping, so a file cut
    short meanwhile is a clear error, not a crash).
    """
    path = Path(path)
    require_regular_file(path)
    header, _ = check_safetensors_header(path)
    metadata = header.get("__metadata__")
    schema = metadata.get("schema") if isinstance(metadata, dict) else None
    if schema != SCHEMA:
        raise HtsrError(f"{path}: not an {SCHEMA} file (schema is {schema!r}); write one with `htsr analyze --save-spectra`")
    with SafetensorsFile(path) as handle:
        tensors = {info.key: handle.load(info.key) for info in handle.tensors()}
    for key, tensor in tensors.items():
        if tensor.dim() != 1 or tensor.dtype not in SPECTRUM_DTYPES or not bool(torch.isfinite(tensor).all()):
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
