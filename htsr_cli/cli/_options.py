"""Options shared by several commands, declared once as `Annotated` aliases (the
analysis options have their own module, `_analysis_options`), the choices they
offer, made from the library's tuples, and the command class that renders every
command's help the same way."""

from __future__ import annotations

import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from htsr_cli.allocations.scores import METRICS
from htsr_cli.allocations.sparsity import GRANULARITIES
from htsr_cli.errors import InvalidSetting
from htsr_cli.settings import DEVICES, FITS, FIX_FINGERS, PRECISIONS, SMALL_N_METHODS, XMIN_METHODS


def choice(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum with one member per value, for an option typer checks and lists as a choice.

    The values stay where the library defines them (the settings check the same
    tuples), so a new xmin rule or device is added in one place.
    """
    return Enum(name, [(value, value) for value in values], type=str, module=__name__)


Xmin = choice("Xmin", XMIN_METHODS)
Device = choice("Device", DEVICES)
Precision = choice("Precision", PRECISIONS)
Fit = choice("Fit", FITS)
FixFingers = choice("FixFingers", FIX_FINGERS)
SmallN = choice("SmallN", SMALL_N_METHODS)
Granularity = choice("Granularity", GRANULARITIES)
Metric = choice("Metric", METRICS)


class PlotFormat(str, Enum):
    png = "png"
    svg = "svg"
    pdf = "pdf"


class FlagsWithoutType:
    """Help lists flags without a `<bool>` type: they take no value."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params


HELP_NAMES_SHARE = 0.4  # of the terminal's width, at most, for an option's names and type


class TwoColumnHelp:
    """Help whose option panels have two columns, names and type first, then the description.

    typer lays options out in six columns that rich narrows together, so at 80
    columns `--require-layers --no-require-layers <text|json|github|markdown>` left
    the description 17 characters. Here the names and type share one column of at most
    HELP_NAMES_SHARE of the width (folded below that) and the description takes the rest.
    typer still builds each panel; this only rearranges its cells before printing.
    """

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from typer import rich_utils

        build_panel = rich_utils._print_options_panel

        def two_column_panel(*, console: Any, **options: Any) -> None:
            panels: list[Any] = []
            build_panel(console=_Recorder(panels), **options)
            for panel in panels:
                console.print(_two_columns(panel, console.width))

        rich_utils._print_options_panel = two_column_panel
        try:
            super().format_help(ctx, formatter)  # type: ignore[misc]
        finally:
            rich_utils._print_options_panel = build_panel


class _Recorder:
    """Stands in for the console typer prints an options panel to, keeping the panel."""

    def __init__(self, panels: list[Any]) -> None:
        self.panels = panels

    def print(self, renderable: Any, *args: Any, **kwargs: Any) -> None:
        self.panels.append(renderable)


def _two_columns(panel: Any, width: int) -> Any:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    table = panel.renderable
    columns = [list(column.cells) for column in table.columns]
    names = []
    for row in range(table.row_count):
        parts = [Text(cell) if isinstance(cell, str) else cell for cell in (column[row] for column in columns[:-1])]
        names.append(Text(" ").join(part for part in parts if part.plain))
    widest = max((name.cell_len for name in names), default=0)
    compact = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False, expand=True)
    compact.add_column(max_width=min(widest, max(20, int(width * HELP_NAMES_SHARE))), overflow="fold")
    compact.add_column(ratio=1)
    for name, description in zip(names, columns[-1]):
        compact.add_row(name, description)
    return Panel(compact, title=panel.title, title_align=panel.title_align, border_style=panel.border_style)


class HtsrCommand(FlagsWithoutType, TwoColumnHelp, TyperCommand):
    """Every htsr command."""


class HtsrGroup(FlagsWithoutType, TwoColumnHelp, TyperGroup):
    """Every htsr command group (allocate, lr-schedule)."""


CheckpointArg = Annotated[
    str,
    typer.Argument(
        metavar="CHECKPOINT",
        help="A .safetensors/.pt/.pth/.bin/.ckpt/.gguf/.onnx file, a Hugging Face directory, or a hub id (org/name; a bare gpt2 when cached).",
        show_default=False,
    ),
]
CheckpointOrReportArg = Annotated[
    str,
    typer.Argument(
        metavar="CHECKPOINT|REPORT.json",
        help="A checkpoint (analyzed now, with the analysis options) or an htsr.report/1 JSON saved by `htsr analyze -f json`.",
        show_default=False,
    ),
]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the result to this file (atomically) instead of stdout.", dir_okay=False, show_default="stdout")]
MergedOpt = Annotated[Optional[str], typer.Option("--merged", metavar="BASE", help="The checkpoint is a PEFT adapter: analyze the model it makes merged into BASE (W + B·A·scale; DoRA magnitudes applied).", show_default="the adapter's update B·A alone")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no `wrote FILE` line.")]
MetricOpt = Annotated[Metric, typer.Option("--metric", help="Which alpha to use (alpha_farms needs --farms, or a report analyzed with it).")]
PlotFormatOpt = Annotated[PlotFormat, typer.Option("--plot-format", help="Image format of the plot files.")]
DpiOpt = Annotated[int, typer.Option("--dpi", help="Resolution of raster plots (png), in dots per inch.", min=10, max=1200)]

PLOT_SUFFIXES = {".png": "png", ".svg": "svg", ".pdf": "pdf"}  # a single-file --plot: its format from its name
DEFAULT_DPI = 150  # plots.DEFAULT_DPI, here too so the CLI starts without matplotlib (a test keeps them equal)

# Settings whose command-line flag is not just the parameter name with dashes.
FLAGS = {
    "window": "--farms-window", "q": "--farms-q", "steps": "--farms-steps",  # FarmsSettings
    "m": "--owl-m", "lam": "--owl-lambda",  # OwlSettings
}


def as_flag(error: InvalidSetting) -> str:
    """An invalid setting as the command line names it: `--min-evals 1: must be at least 2`.

    A value that was not given (None) is left out (`--target is required ...`); one
    that is empty or has spaces is quoted as a shell would need it (`--max-memory '8 GB of RAM'`).
    """
    flag = FLAGS.get(error.parameter, "--" + error.parameter.replace("_", "-"))
    if error.value is None:
        return f"{flag} {error.problem}"
    value = str(error.value)
    if not value or any(character.isspace() for character in value):
        value = shlex.quote(value)
    return f"{flag} {value}: {error.problem}"


# AlphaPruning's allocation (`htsr allocate sparsity`, `htsr prune`).
EpsilonOpt = Annotated[float, typer.Option("--epsilon", help="Spread of the sparsities around the target, in [0, 1).")]
GranularityOpt = Annotated[
    Granularity, typer.Option("--granularity", help="One sparsity per block (its mean alpha) or per matrix.")
]
NoClipOpt = Annotated[bool, typer.Option("--no-clip", help="Do not cap sparsities at 0.99 (the reference output).")]
IncludeEndsOpt = Annotated[
    bool,
    typer.Option(
        "--include-ends",
        help="Prune the first and last weight layers too (a CNN's stem conv and classifier); kept by default.",
    ),
]
