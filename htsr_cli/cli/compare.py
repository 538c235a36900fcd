"""htsr compare: per-layer alpha before (A) and after (B), largest change first
(examples in the command's help)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from htsr_cli.cli._analysis_options import analysis_options
from htsr_cli.cli._options import (
    Metric,
    OutputOpt,
    QuietOpt,
)
from htsr_cli.cli._output import emit_renderable, emit_text, table_width
from htsr_cli.checkpoints.sources import MergedAdapter, is_adapter_directory
from htsr_cli.cli._reports import Source, check_metric_available, reports_from
from htsr_cli.results.compare import Comparison, LayerDelta, compare_reports
from htsr_cli.errors import HtsrError
from htsr_cli.io import check_output_paths
from htsr_cli.results.documents import dumps_json
from htsr_cli.render.outputs import Column, format_cell, markdown_text, printable, to_csv, to_markdown
from htsr_cli.results.report import Report, is_report_file
from htsr_cli.render.terminal import terminal_table
from htsr_cli.settings import AnalyzeSettings


class CompareFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def _columns(comparison: Comparison) -> list[Column]:
    """One set of column names for the table, CSV and markdown (the JSON keeps name/before/after)."""
    metric = comparison.metric
    columns = [Column("layer", "layer", justify="left")]
    if any(layer.name_b for layer in comparison.layers):
        columns.append(Column("layer_b", "layer_b", justify="left"))
    columns += [
        Column(f"{metric}_a", f"{metric}_a", 3),
        Column(f"{metric}_b", f"{metric}_b", 3),
        Column("delta", "delta", 3),
    ]
    if comparison.weights:
        columns += [Column("relative_error", "relative_error", 5), Column("lambda_max_change", "lambda_max_change", 5)]
    return columns + [Column("status", "status", justify="left")]


def _row(layer: LayerDelta, metric: str) -> dict[str, Any]:
    return {"layer": layer.name, "layer_b": layer.name_b, f"{metric}_a": layer.before, f"{metric}_b": layer.after,
            "delta": layer.delta, "relative_error": layer.relative_error,
            "lambda_max_change": layer.lambda_max_change, "status": layer.status}


def summary_line(comparison: Comparison) -> str:
    s = comparison.summary()
    largest = s["largest_change"]
    parts = [
        f"{s['layers_compared']} layers compared",
        f"mean {comparison.metric} {format_cell(s['mean_before'], 3)} -> {format_cell(s['mean_after'], 3)}",
        f"mean delta {format_cell(s['mean_delta'], 3)}",
        f"mean |delta| {format_cell(s['mean_abs_delta'], 3)}",
        f"largest {printable(largest['name'])} {largest['delta']:+.3f}" if largest else "largest -",
        f"{s['only_in_a']} only in A, {s['only_in_b']} only in B, {s['without_value']} without a value",
    ]
    if comparison.weights:
        worst = s["max_relative_error"]
        parts.insert(-1, f"mean relative_error {format_cell(s['mean_relative_error'], 5)}")
        parts.insert(-1, f"max {worst['relative_error']:.5f} in {printable(worst['name'])}" if worst else "max -")
    return " | ".join(parts)


def _weight_pairs(comparison: Comparison, a: Report, b: Report) -> list[tuple[str, str, str]]:
    """(name, tensor in A, tensor in B) for every layer both sides analysed."""
    pairs = []
    for delta in comparison.layers:
        layer_a, layer_b = a.layer(delta.name), b.layer(delta.name_b or delta.name)
        if layer_a is not None and layer_b is not None and layer_a.analysed and layer_b.analysed:
            pairs.append((delta.name, layer_a.tensor, layer_b.tensor))
    return pairs


def _notes(comparison: Comparison) -> list[str]:
    notes = [f"A = {comparison.a}", f"B = {comparison.b}"]
    if comparison.settings_differences:
        notes.append("analysis settings differ: " + "; ".join(comparison.settings_differences))
    return [printable(note) for note in notes]


def _fine_tune(a: str, b: str) -> Source:
    """B as it is compared: a PEFT adapter B is the model it makes from A (A merged with B's update)."""
    if not is_adapter_directory(b):
        return b
    if is_report_file(a) or is_adapter_directory(a):
        raise HtsrError(f"{b} is a PEFT adapter: compare it with the base checkpoint it fine-tunes (A), not {a}")
    return MergedAdapter(b, a)


@analysis_options
def compare(
    a: Annotated[str, typer.Argument(metavar="A", help="The reference: a checkpoint or a saved report JSON.", show_default=False)],
    b: Annotated[str, typer.Argument(metavar="B", help="The one to compare with A: a checkpoint or a saved report JSON.", show_default=False)],
    metric: Annotated[Metric, typer.Option("--metric", help="Which alpha to compare (alpha_farms needs --farms or FARMS reports).")] = Metric.alpha,
    output_format: Annotated[CompareFormat, typer.Option("--format", "-f", help="Output format.")] = CompareFormat.table,
    output: OutputOpt = None,
    settings: AnalyzeSettings = AnalyzeSettings(),
    quiet: QuietOpt = False,
    weights: Annotated[bool, typer.Option("--weights", help="Also compare the weights: ||W_B - W_A||_F / ||W_A||_F and the relative change of lambda_max per layer (A and B must be checkpoints; read one matrix at a time).")] = False,
) -> None:
    """Per-layer delta (B - A) of alpha between two checkpoints or reports, matched by layer name.

    With --weights (two checkpoints), also the relative Frobenius error of each
    weight and the change of its top eigenvalue, read one matrix pair at a time.

    [bold]Examples:[/bold]
      htsr compare base.safetensors finetuned.safetensors
      htsr compare main-report.json pr-report.json --format markdown
      htsr compare base.pth pruned.pth --metric alpha_farms --farms --format json -o deltas.json
      htsr compare ./Llama-3-8B ./Llama-3-8B-Q4_K_M.gguf --weights
      htsr compare ./base-model ./lora-adapter --weights      (B is the adapter merged into A)
    """
    check_output_paths({"-o": output}, [a, b])
    source_b = _fine_tune(a, b)
    check_metric_available(metric.value, settings.farms is not None, [a, b])
    if weights:
        saved = [source for source in (a, b) if is_report_file(source)]
        if saved:
            raise HtsrError(f"--weights reads the weights themselves: {saved[0]} is a saved report; pass both checkpoints")
    report_a, report_b = reports_from([a, source_b], settings, quiet)
    comparison = compare_reports(report_a, report_b, metric.value, weights=weights)
    if weights:
        from htsr_cli.engine.weight_differences import weight_errors  # lazy torch, see app.py

        comparison = comparison.with_weight_errors(weight_errors(a, source_b, _weight_pairs(comparison, report_a, report_b), settings.device))
    columns = _columns(comparison)
    rows = [_row(layer, comparison.metric) for layer in comparison.layers]
    if output_format is CompareFormat.table:
        table = terminal_table(
            columns, rows, table_width(output), title=f"htsr compare ({comparison.metric})", notes=_notes(comparison),
            summary=summary_line(comparison), name_key="layer", keep=("layer", "delta", "status"),
            drop_order=("layer_b", "lambda_max_change", "relative_error", f"{comparison.metric}_a", f"{comparison.metric}_b"),
        )
        emit_renderable(table, output, quiet)
    elif output_format is CompareFormat.json:
        emit_text(dumps_json(comparison.to_json()), output, quiet)
    elif output_format is CompareFormat.csv:
        emit_text(to_csv(columns, rows), output, quiet)
    else:
        notes = "".join(f"- {markdown_text(note)}\n" for note in _notes(comparison))
        heading = f"## htsr compare ({comparison.metric})\n\n{notes}\n"
        emit_text(f"{heading}{to_markdown(columns, rows)}\n{summary_line(comparison)}\n", output, quiet)
