"""htsr allocate: per-layer pruning sparsity (AlphaPruning) and LoRA experts (AlphaLoRA)
(examples in each command's help)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from htsr_cli.allocations.experts import DEFAULT_BETA, ExpertSettings, expert_plan
from htsr_cli.allocations.sparsity import SparsitySettings, sparsity_plan
from htsr_cli.cli._analysis_options import analysis_options
from htsr_cli.cli._options import (
    CheckpointOrReportArg,
    EpsilonOpt,
    Granularity,
    GranularityOpt,
    HtsrCommand,
    HtsrGroup,
    IncludeEndsOpt,
    MergedOpt,
    Metric,
    MetricOpt,
    NoClipOpt,
    OutputOpt,
    QuietOpt,
)
from htsr_cli.cli._output import emit_renderable, emit_text, stderr_console, table_width
from htsr_cli.cli._reports import analysis_report, checkpoint_source
from htsr_cli.io import check_output_paths
from htsr_cli.results.documents import dumps_json
from htsr_cli.render.outputs import Column, format_cell, to_csv
from htsr_cli.settings import AnalyzeSettings
from htsr_cli.render.terminal import terminal_table

app = typer.Typer(
    cls=HtsrGroup,
    name="allocate",
    help="Turn alphas into per-layer decisions: pruning sparsity, LoRA experts, bit widths.",
    no_args_is_help=True,
)


class AllocationFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


FormatOpt = Annotated[AllocationFormat, typer.Option("--format", "-f", help="Output format.")]
TargetOpt = Annotated[
    float, typer.Option("--target", help="Parameter-weighted mean sparsity, in (0, 1).", show_default=False)
]
TotalOpt = Annotated[
    Optional[int], typer.Option("--total", help="Experts over all blocks.", show_default="5 per block")
]
BetaOpt = Annotated[float, typer.Option("--beta", help="Exponent on the block score; larger concentrates experts.")]
PEAK = AnalyzeSettings(xmin="peak")  # AlphaPruning and AlphaLoRA fit with the peak rule


def emit_plan(
    plan: dict[str, Any], columns: list[Column], output_format: AllocationFormat, output: Path | None,
    caption: str, quiet: bool, keep: tuple[str, ...],
) -> None:
    """The plan as JSON, CSV or a table; the table keeps the columns in `keep` at any width."""
    if output_format is AllocationFormat.json:
        emit_text(dumps_json(plan), output, quiet)
    elif output_format is AllocationFormat.csv:
        emit_text(to_csv(columns, plan["layers"]), output, quiet)
    else:
        emit_renderable(terminal_table(columns, plan["layers"], table_width(output), notes=[caption], keep=keep), output, quiet)


@app.command("sparsity", cls=HtsrCommand)
@analysis_options
def sparsity(
    source: CheckpointOrReportArg,
    target: TargetOpt,
    epsilon: EpsilonOpt = 0.3,
    granularity: GranularityOpt = Granularity.block,
    metric: MetricOpt = Metric.alpha,
    no_clip: NoClipOpt = False,
    include_ends: IncludeEndsOpt = False,
    output_format: FormatOpt = AllocationFormat.table,
    output: OutputOpt = None,
    analysis: AnalyzeSettings = PEAK,
    quiet: QuietOpt = False,
) -> None:
    """Layer-wise pruning sparsity from alpha (AlphaPruning): heavier-tailed layers are pruned less.

    A saved report is used as it is (AlphaPruning fits with --xmin peak; a note
    says when the report was analyzed otherwise).

    [bold]Examples:[/bold]
      htsr allocate sparsity ./llama-7b --target 0.7
      htsr allocate sparsity fixtures/tiny-cnn-trained.pth --target 0.5 --granularity matrix -f json -o plan.json
      htsr allocate sparsity run.json --target 0.7 --metric alpha_farms -f csv
      htsr allocate sparsity ./llama-7b --target 0.7 --farms --metric alpha_farms
    """
    settings = SparsitySettings(
        target, epsilon, granularity.value, clip=not no_clip, metric=metric.value, include_ends=include_ends
    )
    check_output_paths({"-o": output}, [source])
    plan = sparsity_plan(analysis_report(source, metric.value, analysis, "AlphaPruning", PEAK, quiet), settings)
    columns = [
        Column("name", "module", justify="left"),
        Column("block", "block", justify="left"),
        Column("params", "params"),
        Column(settings.metric, settings.metric, 3),
    ]
    if settings.granularity == "block":
        columns.append(Column("score", "block mean", 3))
    columns += [Column("sparsity", "sparsity", 4), Column("note", "note", justify="left")]
    if output_format is AllocationFormat.csv:
        keys = ("name", "tensor", "kind", "block", "params", settings.metric, "score", "sparsity", "note")
        columns = [Column(key, key) for key in keys]
    summary = plan["summary"]
    caption = (
        f"weighted mean sparsity {summary['weighted_mean']:.4f} (target {settings.target}) over "
        f"{summary['allocated']} matrices, {summary['allocated_params']:,} params | "
        f"range [{summary['min_sparsity']:.4f}, {summary['max_sparsity']:.4f}] | "
        f"clipped {summary['clipped']} | not pruned {summary['excluded']}"
    )
    emit_plan(plan, columns, output_format, output, caption, quiet, keep=("name", settings.metric, "sparsity", "note"))
    if summary["above_one"]:
        stderr_console.print(
            f"warning: {summary['above_one']} matrices get a sparsity above 1 (more weights than they have); "
            "their entries say so. Lower --target or --epsilon, or drop --no-clip.",
            markup=False,
            highlight=False,
        )


@app.command("experts", cls=HtsrCommand)
@analysis_options
def experts(
    source: CheckpointOrReportArg,
    total: TotalOpt = None,
    beta: BetaOpt = DEFAULT_BETA,
    metric: MetricOpt = Metric.alpha,
    output_format: FormatOpt = AllocationFormat.table,
    output: OutputOpt = None,
    analysis: AnalyzeSettings = PEAK,
    merged: MergedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """LoRA experts per block from its mean alpha (AlphaLoRA): less-trained blocks get more.

    [bold]Examples:[/bold]
      htsr allocate experts ./llama-7b
      htsr allocate experts ./llama-7b --total 160 --format json -o experts.json
      htsr allocate experts run.json --beta 3
      htsr allocate experts ./lora-adapter --merged ./base-model      (a fine-tune: the merged model)
    """
    settings = ExpertSettings(total, beta, metric=metric.value)
    check_output_paths({"-o": output}, [source, *([merged] if merged else [])])
    analysed = checkpoint_source(source, merged, needs_model="AlphaLoRA")
    plan = expert_plan(analysis_report(analysed, metric.value, analysis, "AlphaLoRA", PEAK, quiet), settings)
    columns = [
        Column("name", "block", justify="left"),
        Column("matrices", "matrices"),
        Column("score", f"mean {settings.metric}", 3),
        Column("experts", "experts"),
        Column("top_k", "top_k"),
        Column("note", "note", justify="left"),
    ]
    caption = (
        f"{plan['summary']['experts']} experts over {plan['summary']['blocks']} blocks "
        f"(beta {format_cell(settings.beta, None)})"
    )
    emit_plan(plan, columns, output_format, output, caption, quiet, keep=("name", "experts", "note"))
