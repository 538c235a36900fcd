"""htsr report: one self-contained HTML file with the summary, plots and a sortable layer table
(examples in the command's help)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from htsr_cli.cli._analysis_options import analysis_options
from htsr_cli.cli._options import (
    CheckpointOrReportArg,
    QuietOpt,
)
from htsr_cli.cli._output import layer_progress, note, note_missing_glyphs, wrote
from htsr_cli.errors import HtsrError
from htsr_cli.io import check_output_paths, write_atomic
from htsr_cli.results.report import Report, is_report_file, load_report, spectra_path_for
from htsr_cli.settings import AnalyzeSettings
from htsr_cli.checkpoints.sources import check_source


HTML_SUFFIXES = (".html", ".htm")


def _check_html_name(output: Path) -> None:
    """-o names an HTML file: `-o r.json` would otherwise get a web page a JSON reader chokes on."""
    if output.suffix.lower() not in HTML_SUFFIXES:
        raise HtsrError(
            f"-o {output}: htsr report writes an HTML page; name it .html "
            "(the report as JSON: htsr analyze CHECKPOINT -f json -o FILE.json)"
        )


def _saved_report(path: str, spectra: Path | None, quiet: bool) -> Report:
    """A saved report with the spectra its plots need (--spectra, or the file beside it when there is one)."""
    from htsr_cli.results.spectra_file import attach_spectra  # lazy torch, see app.py

    report = load_report(path)
    if spectra is None:
        spectra = spectra_path_for(path)
        if not spectra.is_file():
            note(
                f"no spectra beside {path} ({spectra}): the page has the summary, table and overview; "
                "per-layer fit plots need `htsr analyze CHECKPOINT --save-spectra FILE` (then --spectra FILE)",
                quiet,
            )
            return report
    attach_spectra(report, spectra)
    return report


@analysis_options
def report(
    source: CheckpointOrReportArg,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The HTML file to write (atomically; named .html or .htm).", dir_okay=False, show_default=False)
    ],
    spectra: Annotated[
        Optional[Path],
        typer.Option(
            "--spectra",
            help="Eigenvalues saved by `htsr analyze --save-spectra` (default: REPORT.spectra.safetensors beside REPORT.json, if it exists).",
            dir_okay=False,
            show_default="beside REPORT.json",
        ),
    ] = None,
    settings: AnalyzeSettings = AnalyzeSettings(),
    quiet: QuietOpt = False,
) -> None:
    """Write an HTML report: summary, interactive alpha overview, sortable layer table and per-layer fit diagnostics.

    The file is self-contained (no network): hover over the overview for each
    layer's alpha, D and tail size; click a layer for its fit diagnostics (D and
    alpha against the xmin candidate, the ESD on log-log and linear axes). From
    a saved REPORT.json without its spectra file the page has everything but the
    per-layer plots.

    [bold]Examples:[/bold]
      htsr report ./my-hf-model -o report.html
      htsr report ./my-hf-model --farms --xmin peak -o report.html
      htsr analyze ./my-hf-model -f json -o run.json --save-spectra run.spectra.safetensors
      htsr report run.json -o report.html              # reads run.spectra.safetensors beside it
      htsr report run.json --spectra saved.safetensors -o report.html
    """
    if is_report_file(source):
        check_output_paths({"-o": output}, [source, spectra if spectra is not None else spectra_path_for(source)])
        _check_html_name(output)
        if settings != AnalyzeSettings():
            raise HtsrError(f"{source} is a saved report: analysis options (--xmin, --farms, ...) apply only to a checkpoint")
        result = _saved_report(source, spectra, quiet)
    else:
        if spectra is not None:
            raise HtsrError(f"--spectra {spectra}: applies to a saved REPORT.json; {source} is analyzed afresh")
        check_source(source)
        check_output_paths({"-o": output}, [source])
        _check_html_name(output)
        from htsr_cli.engine.pipeline import analyze as run_analysis  # lazy torch, see app.py

        with layer_progress(quiet) as progress:
            result = run_analysis(source, settings, progress=progress, keep_spectra=True)
    from htsr_cli.render.html import render_html  # matplotlib loads only for commands that draw
    from htsr_cli.render.plots import missing_glyphs

    with layer_progress(quiet, "drawing") as progress, missing_glyphs() as glyphs:
        page = render_html(result, progress=progress)
    write_atomic(output, page)
    note_missing_glyphs(glyphs.missing, quiet)
    wrote(output, quiet)
