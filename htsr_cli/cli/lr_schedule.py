"""htsr lr-schedule: layer-wise learning rates from alpha (TempBalance, Model Balancing).

    htsr lr-schedule export fixtures/resnet18_w16.pth --base-lr 0.1 -o schedule.json
    htsr lr-schedule export fixtures/resnet18_w16.pth --base-lr 0.1 --epochs 200 --format csv
    htsr lr-schedule export ./my-hf-model --base-lr 2e-5 --map sigmoid --unit block --format yaml
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer
import yaml

from htsr_cli.allocations.learning_rates import LrSettings, lr_schedule, modules_of
from htsr_cli.cli._options import CheckpointArg, Device, DeviceOpt, MetricFarmsOpt, OutputOpt, QuietOpt, Xmin, XminOpt
from htsr_cli.cli._output import emit_text, stderr_console
from htsr_cli.cli.allocate import analyse
from htsr_cli.outputs import Column, dumps_json, to_csv

app = typer.Typer(
    name="lr-schedule",
    help="Layer-wise learning rates from alpha, for training with TempBalance.",
    no_args_is_help=True,
)


class Map(str, Enum):
    linear = "linear"
    sqrt = "sqrt"
    log2 = "log2"
    step = "step"
    sigmoid = "sigmoid"


class Unit(str, Enum):
    layer = "layer"
    block = "block"


class Schedule(str, Enum):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class ScheduleFormat(str, Enum):
    json = "json"
    csv = "csv"
    yaml = "yaml"


BaseLrOpt = Annotated[float, typer.Option("--base-lr", help="The base learning rate eta0 (> 0).", show_default=False)]
MapOpt = Annotated[Map, typer.Option("--map", help="How alphas become LR factors (sigmoid: Model Balancing).")]
UnitOpt = Annotated[Unit, typer.Option("--unit", help="One factor per layer, or per block from its mean alpha.")]
MinRatioOpt = Annotated[float, typer.Option("--min-ratio", help="Smallest factor (linear and step maps).")]
MaxRatioOpt = Annotated[float, typer.Option("--max-ratio", help="Largest factor (linear and step maps).")]
EpochsOpt = Annotated[
    Optional[int], typer.Option("--epochs", help="Also list each module's LR for epochs 0..T-1.", show_default=False)
]
ScheduleOpt = Annotated[Schedule, typer.Option("--schedule", help="Base LR schedule over --epochs.")]
FormatOpt = Annotated[ScheduleFormat, typer.Option("--format", "-f", help="Output format.")]


@app.command("export")
def export(
    checkpoint: CheckpointArg,
    base_lr: BaseLrOpt,
    factor_map: MapOpt = Map.linear,
    unit: UnitOpt = Unit.layer,
    min_ratio: MinRatioOpt = 0.5,
    max_ratio: MaxRatioOpt = 1.5,
    farms: MetricFarmsOpt = False,
    xmin: XminOpt = Xmin.median,
    epochs: EpochsOpt = None,
    schedule: ScheduleOpt = Schedule.cosine,
    device: DeviceOpt = Device.auto,
    output_format: FormatOpt = ScheduleFormat.json,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Export per-module LR factors and LRs computed once from a checkpoint's alphas."""
    settings = LrSettings(
        base_lr, factor_map.value, unit.value, min_ratio, max_ratio,
        metric="alpha_farms" if farms else "alpha", epochs=epochs, schedule=schedule.value,
    )
    from htsr_cli.checkpoints import open_checkpoint  # lazy torch, see app.py

    report = analyse(checkpoint, xmin, farms, device, quiet)
    with open_checkpoint(checkpoint) as source:  # metadata only: finds the BatchNorm modules
        modules = modules_of(info.key for info in source.tensors())
    plan = lr_schedule(report, settings, modules)
    if output_format is ScheduleFormat.json:
        emit_text(dumps_json(plan), output)
    elif output_format is ScheduleFormat.yaml:
        emit_text(yaml.safe_dump(plan, sort_keys=False), output)
    else:
        keys = ["name", "kind", "block", settings.metric, "num_evals", "factor", "lr"]
        epoch_keys = [f"lr_epoch_{t}" for t in range(epochs or 0)]
        rows = [{**entry, **dict(zip(epoch_keys, entry.get("lrs", [])))} for entry in plan["layers"]]
        emit_text(to_csv([Column(key, key) for key in keys + epoch_keys + ["note"]], rows), output)
        if epochs and not quiet:
            stderr_console.print("note: factors are fixed, computed once from this checkpoint's alphas")
