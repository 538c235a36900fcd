"""For commands that take `CHECKPOINT|REPORT.json`: read saved reports, analyse checkpoints."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from htsr_cli.cli._output import layer_progress
from htsr_cli.errors import HtsrError
from htsr_cli.report import Report, is_report_file, load_report
from htsr_cli.settings import AnalyzeSettings
from htsr_cli.sources import check_source


class Metric(str, Enum):
    alpha = "alpha"
    alpha_farms = "alpha_farms"


CheckpointOrReportArg = Annotated[
    str,
    typer.Argument(
        metavar="CHECKPOINT|REPORT.json",
        help="A checkpoint (analysed now, with the analysis options) or an htsr.report/1 JSON saved by `htsr analyze -f json`.",
        show_default=False,
    ),
]


def reports_from(sources: list[str], settings: AnalyzeSettings, quiet: bool) -> list[Report]:
    """Saved reports are read as they are; checkpoints are analysed with `settings`.

    Analysis options given when every source is a saved report would silently do
    nothing, so they are refused.
    """
    saved = [is_report_file(source) for source in sources]
    for source, is_saved in zip(sources, saved):
        if not is_saved:
            check_source(source)  # a missing path is reported before torch is imported
    if all(saved) and settings != AnalyzeSettings():
        raise HtsrError(
            f"{sources[0]} is a saved report: analysis options (--xmin, --farms, ...) apply only to a checkpoint"
        )
    reports = []
    for source, is_saved in zip(sources, saved):
        if is_saved:
            reports.append(load_report(source))
        else:
            from htsr_cli.analysis import analyze as run_analysis  # lazy torch, see app.py

            with layer_progress(quiet) as progress:
                reports.append(run_analysis(source, settings, progress=progress))
    return reports
