"""For commands that take `CHECKPOINT or REPORT.json`: read the saved report, or analyse now."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from htsr_cli.analysis import analyze as run_analysis
from htsr_cli.cli._output import layer_progress
from htsr_cli.report import Report, is_report_file, load_report
from htsr_cli.settings import AnalyzeSettings


class Metric(str, Enum):
    alpha = "alpha"
    alpha_farms = "alpha_farms"


CheckpointOrReportArg = Annotated[
    str,
    typer.Argument(
        help="A checkpoint (analysed now, with the analysis flags) or a saved `htsr analyze --format json` report.",
        show_default=False,
    ),
]


def report_from(source: str, settings: AnalyzeSettings, quiet: bool) -> Report:
    """An htsr.report/1 JSON file is read as is (analysis flags do not apply); anything else is analysed."""
    if is_report_file(source):
        return load_report(source)
    with layer_progress(quiet) as progress:
        return run_analysis(source, settings, progress=progress)
