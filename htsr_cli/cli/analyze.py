"""htsr analyze: per-layer HT-SR quality of every weight matrix (examples in the command's help)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from htsr_cli.cli._analysis_options import analysis_options
from htsr_cli.cli._options import (
    CheckpointArg,
    DEFAULT_DPI,
    MergedOpt,
    DpiOpt,
    OutputOpt,
    PlotFormat,
    PlotFormatOpt,
    QuietOpt,
)
from htsr_cli.cli._output import (
    emit_renderable,
    emit_text,
    layer_progress,
    note_missing_glyphs,
    print_timings,
    table_width,
    wrote,
)
from htsr_cli.errors import HtsrError
from htsr_cli.io import check_output_paths
from htsr_cli.render.tables import parse_columns, report_csv, report_markdown, report_table
from htsr_cli.settings import AnalyzeSettings
from htsr_cli.checkpoints.sources import check_source
from htsr_cli.cli._reports import checkpoint_source


class ReportFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


@analysis_options
def analyze(
    checkpoint: CheckpointArg,
    output_format: Annotated[ReportFormat, typer.Option("--format", "-f", help="Output format (json: htsr.report/1).")] = ReportFormat.table,
    output: OutputOpt = None,
    columns: Annotated[Optional[str], typer.Option("--columns", help="Comma-separated columns for table, csv and markdown, e.g. layer,alpha,D,entropy (any report field).", show_default="fit to the terminal")] = None,
    settings: AnalyzeSettings = AnalyzeSettings(),
    merged: MergedOpt = None,
    quiet: QuietOpt = False,
    plots: Annotated[Optional[Path], typer.Option("--plots", help="Write overview, one ESD and one fit-diagnostics plot per analyzed layer into this directory.", file_okay=False, show_default="no plots")] = None,
    plot_format: PlotFormatOpt = PlotFormat.png,
    dpi: DpiOpt = DEFAULT_DPI,
    spectra_file: Annotated[Optional[Path], typer.Option("--save-spectra", help="Save every layer's eigenvalues (safetensors) for `htsr report`.", dir_okay=False, show_default="not saved")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="Print seconds per stage (read, transfer, solve, fit, farms) on stderr.")] = False,
) -> None:
    """Fit the power-law exponent alpha of every weight matrix's eigenvalue spectrum.

    On a terminal the table fits its width: layer, alpha and quality always
    show, other columns are hidden when space runs out (a footnote says which),
    long names are cut in the middle. Piped or written with -o, every column
    shows in full.

    [bold]Examples:[/bold]
      htsr analyze fixtures/tiny-cnn-trained.pth
      htsr analyze ./my-hf-model --format json -o report.json
      htsr analyze ./my-hf-model --columns layer,alpha,D,tail_size,quality
      htsr analyze sentence-transformers/all-MiniLM-L6-v2 --farms --layers 'encoder\\.layer\\.0'
      htsr analyze ./my-hf-model --plots plots/ --plot-format svg --save-spectra run.spectra.safetensors
      htsr analyze ./lora-adapter --min-evals 4        (each update B·A, from an r x r problem)
      htsr analyze ./lora-adapter --merged ./base-model
    """
    chosen = parse_columns(columns) if columns is not None else None
    if chosen is not None and output_format is ReportFormat.json:
        raise HtsrError("--columns applies to the table, csv and markdown formats; json always has every field")
    check_source(checkpoint)
    source = checkpoint_source(checkpoint, merged)
    check_output_paths({"-o": output, "--save-spectra": spectra_file, "--plots": plots}, [checkpoint, *([merged] if merged else [])])
    from htsr_cli.engine.pipeline import analyze as run_analysis  # lazy torch, see app.py
    from htsr_cli.results.spectra_file import save_spectra

    with layer_progress(quiet) as progress:
        report = run_analysis(
            source,
            settings,
            progress=progress,
            keep_spectra=plots is not None or spectra_file is not None,
            profile=profile,
        )
    if profile:
        print_timings(report.timings)
    if output_format is ReportFormat.table:
        emit_renderable(report_table(report, table_width(output), chosen), output, quiet)
    elif output_format is ReportFormat.json:
        emit_text(report.dumps(), output, quiet)
    elif output_format is ReportFormat.csv:
        emit_text(report_csv(report, chosen), output, quiet)
    else:
        emit_text(report_markdown(report, chosen), output, quiet)
    if spectra_file is not None:
        save_spectra(spectra_file, report.spectra)
        wrote(spectra_file, quiet)
    if plots is not None:
        from htsr_cli.render.plots import missing_glyphs, write_plots  # matplotlib loads only when drawing

        with layer_progress(quiet, "drawing") as progress, missing_glyphs() as glyphs:
            written = write_plots(report, plots, plot_format.value, dpi, progress=progress)
        note_missing_glyphs(glyphs.missing, quiet)
        wrote(plots, quiet, f" ({len(written)} {plot_format.value} files: overview, ESDs, fit/ diagnostics)")
