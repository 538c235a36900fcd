"""htsr allocate: per-layer pruning sparsity (AlphaPruning) and LoRA experts (AlphaLoRA).

    htsr allocate sparsity ./llama-7b --target 0.7
    htsr allocate sparsity fixtures/tiny-cnn-trained.pth --target 0.5 --granularity matrix -f json -o plan.json
    htsr allocate experts ./llama-7b --total 160 --format json
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from htsr_cli.allocations.experts import DEFAULT_BETA, ExpertSettings, expert_plan
from htsr_cli.allocations.sparsity import SparsitySettings, sparsity_plan
from htsr_cli.cli._options import (
    CheckpointArg,
    Device,
    DeviceOpt,
    EpsilonOpt,
    Granularity,
    GranularityOpt,
    MetricFarmsOpt,
    NoClipOpt,
    OutputOpt,
    QuietOpt,
    Xmin,
    XminOpt,
)
from htsr_cli.cli._output import emit_renderable, emit_text, layer_progress
from htsr_cli.outputs import Column, dumps_json, format_cell, to_csv, to_rich_table
from htsr_cli.report import Report
from htsr_cli.settings import AnalyzeSettings, FarmsSettings

app = typer.Typer(
    name="allocate",
    help="Turn alphas into per-layer decisions: pruning sparsity, LoRA experts.",
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
    Optional[int], typer.Option("--total", help="Experts over all blocks (default 5 per block).", show_default=False)
]
BetaOpt = Annotated[float, typer.Option("--beta", help="Exponent on the block score; larger concentrates experts.")]


def analyse(checkpoint: str, xmin: Xmin, farms: bool, device: Device, quiet: bool) -> Report:
    """The analysis behind an allocation, with the progress bar on stderr."""
    from htsr_cli.analysis import analyze  # lazy torch, see app.py

    settings = AnalyzeSettings(xmin=xmin.value, farms=FarmsSettings() if farms else None, device=device.value)
    with layer_progress(quiet) as progress:
        return analyze(checkpoint, settings, progress=progress)


def emit_plan(
    plan: dict[str, Any], columns: list[Column], output_format: AllocationFormat, output: Path | None, caption: str
) -> None:
    if output_format is AllocationFormat.json:
        emit_text(dumps_json(plan), output)
    elif output_format is AllocationFormat.csv:
        emit_text(to_csv(columns, plan["layers"]), output)
    else:
        emit_renderable(to_rich_table(columns, plan["layers"], caption=caption), output)


@app.command("sparsity")
def sparsity(
    checkpoint: CheckpointArg,
    target: TargetOpt,
    epsilon: EpsilonOpt = 0.3,
    granularity: GranularityOpt = Granularity.block,
    farms: MetricFarmsOpt = False,
    xmin: XminOpt = Xmin.peak,
    no_clip: NoClipOpt = False,
    device: DeviceOpt = Device.auto,
    output_format: FormatOpt = AllocationFormat.table,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Layer-wise pruning sparsity from alpha (AlphaPruning): heavier-tailed layers are pruned less."""
    settings = SparsitySettings(
        target, epsilon, granularity.value, clip=not no_clip, metric="alpha_farms" if farms else "alpha"
    )
    plan = sparsity_plan(analyse(checkpoint, xmin, farms, device, quiet), settings)
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
    emit_plan(plan, columns, output_format, output, caption)


@app.command("experts")
def experts(
    checkpoint: CheckpointArg,
    total: TotalOpt = None,
    beta: BetaOpt = DEFAULT_BETA,
    farms: MetricFarmsOpt = False,
    xmin: XminOpt = Xmin.peak,
    device: DeviceOpt = Device.auto,
    output_format: FormatOpt = AllocationFormat.table,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """LoRA experts per block from its mean alpha (AlphaLoRA): less-trained blocks get more."""
    settings = ExpertSettings(total, beta, metric="alpha_farms" if farms else "alpha")
    plan = expert_plan(analyse(checkpoint, xmin, farms, device, quiet), settings)
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
    emit_plan(plan, columns, output_format, output, caption)
