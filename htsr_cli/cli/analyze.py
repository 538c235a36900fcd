"""htsr analyze: per-layer HT-SR quality of every weight matrix.

    htsr analyze fixtures/tiny-cnn-trained.pth
    htsr analyze ./my-hf-model --format json -o report.json
    htsr analyze sentence-transformers/all-MiniLM-L6-v2 --farms --layers 'encoder\\.layer\\.0'
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from htsr_cli.cli._options import (
    CheckpointArg,
    ConvScaleOpt,
    Device,
    DeviceOpt,
    FarmsOpt,
    FarmsQOpt,
    FarmsStepsOpt,
    FarmsWindowOpt,
    LayersOpt,
    MaxMemoryOpt,
    MinEvalsOpt,
    OutputOpt,
    Precision,
    PrecisionOpt,
    QuietOpt,
    Xmin,
    XminOpt,
)
from htsr_cli.cli._output import emit_renderable, emit_text, layer_progress, print_timings
from htsr_cli.io import check_output_paths
from htsr_cli.report_views import report_csv, report_markdown, report_table
from htsr_cli.settings import AnalyzeSettings, FarmsSettings
from htsr_cli.sources import check_source


class ReportFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def settings_from_options(
    xmin: Xmin, farms: bool, farms_window: int, farms_q: float, farms_steps: int,
    device: Device, precision: Precision, conv_scale: float, min_evals: int, layers: str | None,
    max_memory: str | None = None,
) -> AnalyzeSettings:
    """One place that turns the shared analysis flags into typed settings."""
    return AnalyzeSettings(
        xmin=xmin.value,
        farms=FarmsSettings(farms_window, farms_q, farms_steps) if farms else None,
        device=device.value,
        precision=precision.value,
        conv_scale=conv_scale,
        min_evals=min_evals,
        layers=layers,
        max_memory=max_memory,
    )


def analyze(
    checkpoint: CheckpointArg,
    farms: FarmsOpt = False,
    xmin: XminOpt = Xmin.ks,
    layers: LayersOpt = None,
    device: DeviceOpt = Device.auto,
    output_format: Annotated[ReportFormat, typer.Option("--format", "-f", help="Output format.")] = ReportFormat.table,
    output: OutputOpt = None,
    min_evals: MinEvalsOpt = 10,
    conv_scale: ConvScaleOpt = 1.0,
    farms_window: FarmsWindowOpt = 2000,
    farms_q: FarmsQOpt = 1.0,
    farms_steps: FarmsStepsOpt = 10,
    precision: PrecisionOpt = Precision.mixed,
    max_memory: MaxMemoryOpt = None,
    quiet: QuietOpt = False,
    plots: Annotated[Optional[Path], typer.Option("--plots", help="Write one ESD plot per analysed layer and overview.png into this directory.", file_okay=False)] = None,
    spectra_file: Annotated[Optional[Path], typer.Option("--save-spectra", help="Save every layer's eigenvalues (safetensors) for `htsr report`.", dir_okay=False)] = None,
    profile: Annotated[bool, typer.Option("--profile", help="Print seconds per stage (read, transfer, solve, fit, farms) on stderr.")] = False,
) -> None:
    """Fit the power-law exponent alpha of every weight matrix's eigenvalue spectrum."""
    settings = settings_from_options(
        xmin, farms, farms_window, farms_q, farms_steps, device, precision, conv_scale, min_evals, layers, max_memory
    )
    check_source(checkpoint)
    check_output_paths({"-o": output, "--save-spectra": spectra_file, "--plots": plots}, [checkpoint])
    from htsr_cli.analysis import analyze as run_analysis  # lazy torch, see app.py
    from htsr_cli.spectra_file import save_spectra

    with layer_progress(quiet) as progress:
        report = run_analysis(
            checkpoint,
            settings,
            progress=progress,
            keep_spectra=plots is not None or spectra_file is not None,
            profile=profile,
        )
    if profile:
        print_timings(report.timings)
    if output_format is ReportFormat.table:
        emit_renderable(report_table(report), output)
    elif output_format is ReportFormat.json:
        emit_text(report.dumps(), output)
    elif output_format is ReportFormat.csv:
        emit_text(report_csv(report), output)
    else:
        emit_text(report_markdown(report), output)
    if spectra_file is not None:
        save_spectra(spectra_file, report.spectra)
    if plots is not None:
        from htsr_cli.plots import write_plots  # matplotlib loads only when drawing

        write_plots(report, plots)
