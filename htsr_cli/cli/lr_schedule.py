"""htsr lr-schedule: layer-wise learning rates from alpha (TempBalance, Model Balancing)
(examples in the command's help)."""

from __future__ import annotations

import math
from enum import Enum
from typing import Annotated, Any, Optional

import typer
import yaml

from htsr_cli.allocations.learning_rates import MAPS, SCHEDULES, UNITS, LrSettings, lr_schedule, modules_of
from htsr_cli.cli._analysis_options import analysis_options
from htsr_cli.cli._options import (
    CheckpointOrReportArg,
    HtsrCommand,
    HtsrGroup,
    MergedOpt,
    Metric,
    MetricOpt,
    OutputOpt,
    QuietOpt,
    choice,
)
from htsr_cli.cli._output import emit_renderable, emit_text, note, table_width
from htsr_cli.cli._reports import analysis_report, checkpoint_source
from htsr_cli.io import check_output_paths
from htsr_cli.results.documents import dumps_json
from htsr_cli.render.outputs import Column, format_cell, to_csv
from htsr_cli.results.report import is_report_file
from htsr_cli.render.terminal import terminal_table
from htsr_cli.settings import AnalyzeSettings

app = typer.Typer(
    cls=HtsrGroup,
    name="lr-schedule",
    help="Layer-wise learning rates from alpha, for training with TempBalance.",
    no_args_is_help=True,
)


Map = choice("Map", MAPS)
Unit = choice("Unit", UNITS)
Schedule = choice("Schedule", SCHEDULES)


class ScheduleFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    yaml = "yaml"


BaseLrOpt = Annotated[float, typer.Option("--base-lr", help="The base learning rate eta0 (> 0).", show_default=False)]
MapOpt = Annotated[Map, typer.Option("--map", help="How alphas become LR factors (sigmoid: Model Balancing).")]
UnitOpt = Annotated[Unit, typer.Option("--unit", help="One factor per layer, or per block from its mean alpha.")]
MinRatioOpt = Annotated[float, typer.Option("--min-ratio", help="Smallest factor (linear and step maps).")]
MaxRatioOpt = Annotated[float, typer.Option("--max-ratio", help="Largest factor (linear and step maps).")]
EpochsOpt = Annotated[
    Optional[int], typer.Option("--epochs", help="Also list each module's LR for epochs 0..T-1.", show_default="none")
]
ScheduleOpt = Annotated[Schedule, typer.Option("--schedule", help="Base LR schedule over --epochs.")]
FormatOpt = Annotated[
    Optional[ScheduleFormat],
    typer.Option("--format", "-f", help="Output format; yaml and json load into TempBalance.from_schedule.",
                 show_default="table on a terminal, else json"),
]
MEDIAN = AnalyzeSettings(xmin="median")  # TempBalance fits with the median rule
TEXT_DIGITS = 12  # significant digits in CSV: full float noise (0.07500000000000001) helps no reader


def _rounded(value: Any) -> Any:
    return float(f"{value:.{TEXT_DIGITS}g}") if isinstance(value, float) else value


@app.command("export", cls=HtsrCommand)
@analysis_options
def export(
    source: CheckpointOrReportArg,
    base_lr: BaseLrOpt,
    factor_map: MapOpt = Map.linear,
    unit: UnitOpt = Unit.layer,
    min_ratio: MinRatioOpt = 0.5,
    max_ratio: MaxRatioOpt = 1.5,
    metric: MetricOpt = Metric.alpha,
    epochs: EpochsOpt = None,
    schedule: ScheduleOpt = Schedule.cosine,
    output_format: FormatOpt = None,
    output: OutputOpt = None,
    analysis: AnalyzeSettings = MEDIAN,
    merged: MergedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Export per-module LR factors and LRs computed once from a checkpoint's (or a saved report's) alphas.

    From a checkpoint, BatchNorm modules are listed with the factor of the conv
    they follow (layer1.0.bn1 takes layer1.0.conv1's). A saved report holds
    weight matrices only, so from a report the file lists those; the BatchNorm
    modules still follow their conv when the file is loaded with
    TempBalance.from_schedule, which finds them in the model.

    [bold]Examples:[/bold]
      htsr lr-schedule export fixtures/resnet18_w16.pth --base-lr 0.1 -o schedule.json
      htsr lr-schedule export fixtures/resnet18_w16.pth --base-lr 0.1 --epochs 200 --format csv
      htsr lr-schedule export ./my-hf-model --base-lr 2e-5 --map sigmoid --unit block --format yaml
      htsr lr-schedule export run.json --base-lr 0.1 --metric alpha_farms
      htsr lr-schedule export ./lora-adapter --merged ./base-model --base-lr 2e-4
    """
    settings = LrSettings(
        base_lr, factor_map.value, unit.value, min_ratio, max_ratio,
        metric=metric.value, epochs=epochs, schedule=schedule.value,
    )
    check_output_paths({"-o": output}, [source, *([merged] if merged else [])])
    analysed = checkpoint_source(source, merged, needs_model="TempBalance")
    report = analysis_report(analysed, metric.value, analysis, "TempBalance", MEDIAN, quiet)
    if is_report_file(source):
        modules: list[str] = []
        note(f"{source} is a report: the schedule lists weight matrices only (no BatchNorm modules)", quiet)
    else:
        from htsr_cli.checkpoints import open_checkpoint  # lazy torch, see app.py

        with open_checkpoint(analysed) as checkpoint:  # metadata only: finds the BatchNorm modules
            modules = modules_of(info.key for info in checkpoint.tensors())
    plan = lr_schedule(report, settings, modules)
    if output_format is None:
        output_format = ScheduleFormat.table if table_width(output) is not None else ScheduleFormat.json
    keys = ["name", "kind", "block", settings.metric, "num_evals", "factor", "lr"]
    if output_format is ScheduleFormat.json:
        emit_text(dumps_json(plan), output, quiet)
    elif output_format is ScheduleFormat.yaml:
        emit_text(yaml.safe_dump(plan, sort_keys=False, width=math.inf), output, quiet)  # unfolded: see workflow_safe
    elif output_format is ScheduleFormat.csv:
        epoch_keys = [f"lr_epoch_{t}" for t in range(epochs or 0)]
        rows = [
            {key: _rounded(value) for key, value in {**entry, **dict(zip(epoch_keys, entry.get("lrs", [])))}.items()}
            for entry in plan["layers"]
        ]
        emit_text(to_csv([Column(key, key) for key in keys + epoch_keys + ["note"]], rows), output, quiet)
    else:
        digits = {settings.metric: 3, "factor": 4}
        columns = [
            Column(key, key, digits.get(key), "left" if key in ("name", "kind", "block") else "right") for key in keys
        ] + [Column("note", "note", justify="left")]
        summary = plan["summary"]
        caption = (
            f"base LR {format_cell(base_lr, None)} | {summary['adjusted']} of {summary['modules']} modules adjusted | "
            f"factors {format_cell(summary['min_factor'], 4)} to {format_cell(summary['max_factor'], 4)}"
        )
        table = terminal_table(columns, plan["layers"], table_width(output), notes=[caption],
                               keep=("name", "factor", "lr", "note"), drop_order=("block", "num_evals", "kind", settings.metric))
        emit_renderable(table, output, quiet)
    if epochs:
        note("factors are fixed, computed once from this checkpoint's alphas", quiet)
