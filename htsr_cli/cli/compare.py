"""htsr compare: per-layer alpha before (A) and after (B), largest change first
(examples in the command's help)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.text import Text

from htsr_cli.cli._options import (
    ConvScaleOpt,
    Device,
    DeviceOpt,
    FarmsOpt,
    FarmsQOpt,
    FarmsStepsOpt,
    FarmsWindowOpt,
    LayersOpt,
    Metric,
    MinEvalsOpt,
    OutputOpt,
    Precision,
    PrecisionOpt,
    QuietOpt,
    Xmin,
    XminOpt,
)
from htsr_cli.cli._output import emit_renderable, emit_text, table_width
from htsr_cli.cli._reports import check_metric_available, reports_from
from htsr_cli.cli.analyze import settings_from_options
from htsr_cli.compare import Comparison, LayerDelta, compare_reports
from htsr_cli.outputs import Column, dumps_json, format_cell, to_csv, to_markdown, to_rich_table
from htsr_cli.terminal import fit_columns


class CompareFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def _columns(metric: str) -> list[Column]:
    """One set of column names for the table, CSV and markdown (the JSON keeps name/before/after)."""
    return [
        Column("layer", "layer", justify="left"),
        Column(f"{metric}_a", f"{metric}_a", 3),
        Column(f"{metric}_b", f"{metric}_b", 3),
        Column("delta", "delta", 3),
        Column("status", "status", justify="left"),
    ]


def _row(layer: LayerDelta, metric: str) -> dict[str, Any]:
    return {"layer": layer.name, f"{metric}_a": layer.before, f"{metric}_b": layer.after,
            "delta": layer.delta, "status": layer.status}


def summary_line(comparison: Comparison) -> str:
    s = comparison.summary()
    largest = s["largest_change"]
    parts = [
        f"{s['layers_compared']} layers compared",
        f"mean {comparison.metric} {format_cell(s['mean_before'], 3)} -> {format_cell(s['mean_after'], 3)}",
        f"mean delta {format_cell(s['mean_delta'], 3)}",
        f"mean |delta| {format_cell(s['mean_abs_delta'], 3)}",
        f"largest {largest['name']} {largest['delta']:+.3f}" if largest else "largest -",
        f"{s['only_in_a']} only in A, {s['only_in_b']} only in B, {s['without_value']} without a value",
    ]
    return " | ".join(parts)


def _notes(comparison: Comparison) -> list[str]:
    notes = [f"A = {comparison.a}", f"B = {comparison.b}"]
    if comparison.settings_differences:
        notes.append("analysis settings differ: " + "; ".join(comparison.settings_differences))
    return notes


def compare(
    a: Annotated[str, typer.Argument(metavar="A", help="The reference: a checkpoint or a saved report JSON.", show_default=False)],
    b: Annotated[str, typer.Argument(metavar="B", help="The one to compare with A: a checkpoint or a saved report JSON.", show_default=False)],
    metric: Annotated[Metric, typer.Option("--metric", help="Which alpha to compare (alpha_farms needs --farms or FARMS reports).")] = Metric.alpha,
    output_format: Annotated[CompareFormat, typer.Option("--format", "-f", help="Output format.")] = CompareFormat.table,
    output: OutputOpt = None,
    farms: FarmsOpt = False,
    xmin: XminOpt = Xmin.ks,
    layers: LayersOpt = None,
    device: DeviceOpt = Device.auto,
    min_evals: MinEvalsOpt = 10,
    conv_scale: ConvScaleOpt = 1.0,
    farms_window: FarmsWindowOpt = 2000,
    farms_q: FarmsQOpt = 1.0,
    farms_steps: FarmsStepsOpt = 10,
    precision: PrecisionOpt = Precision.float64,
    quiet: QuietOpt = False,
) -> None:
    """Per-layer delta (B - A) of alpha between two checkpoints or reports, matched by layer name.

    [bold]Examples:[/bold]
      htsr compare base.safetensors finetuned.safetensors
      htsr compare main-report.json pr-report.json --format markdown
      htsr compare base.pth pruned.pth --metric alpha_farms --farms --format json -o deltas.json
    """
    settings = settings_from_options(
        xmin, farms, farms_window, farms_q, farms_steps, device, precision, conv_scale, min_evals, layers
    )
    check_metric_available(metric.value, farms, [a, b])
    comparison = compare_reports(*reports_from([a, b], settings, quiet), metric.value)
    columns = _columns(comparison.metric)
    rows = [_row(layer, comparison.metric) for layer in comparison.layers]
    if output_format is CompareFormat.table:
        title = f"htsr compare ({comparison.metric})"
        fitted = fit_columns(columns, rows, table_width(output), name_key="layer")
        table = to_rich_table(fitted.columns, fitted.rows, title=title, caption="\n".join(_notes(comparison)))
        emit_renderable(Group(table, Text(summary_line(comparison), style="bold")), output, quiet)
    elif output_format is CompareFormat.json:
        emit_text(dumps_json(comparison.to_json()), output, quiet)
    elif output_format is CompareFormat.csv:
        emit_text(to_csv(columns, rows), output, quiet)
    else:
        notes = "".join(f"- {note}\n" for note in _notes(comparison))
        heading = f"## htsr compare ({comparison.metric})\n\n{notes}\n"
        emit_text(f"{heading}{to_markdown(columns, rows)}\n{summary_line(comparison)}\n", output, quiet)
