"""htsr prune: zero weights by a per-layer allocation and save the checkpoint again in its own layout.

    htsr prune ./llama-7b --target 0.7 -o llama-7b-pruned
    htsr prune ./llama-7b --target 0.7 --method wanda --calibration c4.txt -o llama-7b-wanda
    htsr prune ./llama-7b --target 0.7 --allocation owl --method wanda --calibration c4.txt -o llama-7b-owl
    htsr prune ./llama-7b --allocation plan.json -o llama-7b-planned
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from htsr_cli.cli._analysis_options import XminOpt
from htsr_cli.cli._options import (
    CheckpointArg,
    Device,
    EpsilonOpt,
    Granularity,
    GranularityOpt,
    IncludeEndsOpt,
    Metric,
    NoClipOpt,
    QuietOpt,
    Xmin,
)
from htsr_cli.cli._output import emit_renderable, layer_progress, table_width
from htsr_cli.render.outputs import Column
from htsr_cli.render.terminal import terminal_table


PruneMetricOpt = Annotated[
    Metric, typer.Option("--metric", help="Which alpha AlphaPruning allocates from (alpha_farms: FARMS is computed for it).")
]


class Method(str, Enum):
    magnitude = "magnitude"
    wanda = "wanda"


OutDirOpt = Annotated[
    Path,
    typer.Option(
        "--output", "-o", file_okay=False, show_default=False,
        help="Directory to write the pruned checkpoint and htsr-prune.json to (created; must be new or empty).",
    ),
]
TargetOpt = Annotated[
    Optional[float],
    typer.Option(
        "--target", show_default="the allocation file's",
        help="Sparsity over the prunable matrices, in (0, 1); optional with an allocation file.",
    ),
]
AllocationOpt = Annotated[
    str,
    typer.Option(
        "--allocation",
        help="alphapruning (per-layer from alpha), uniform, owl (outlier-weighted, needs --calibration), "
        "or an htsr.sparsity/1 file from `htsr allocate sparsity -f json`.",
    ),
]
MethodOpt = Annotated[
    Method,
    typer.Option("--method", help="magnitude: smallest |W| per matrix; wanda: smallest |W|*||X|| per output row."),
]
CalibrationOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--calibration", dir_okay=False, show_default="none",
        help="UTF-8 text file for input activations (wanda, owl), tokenized with the model's tokenizer.",
    ),
]
SamplesOpt = Annotated[int, typer.Option("--samples", help="Calibration windows.")]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="Tokens per calibration window.")]
OwlMOpt = Annotated[float, typer.Option("--owl-m", help="OWL: an outlier is a score above M times its block's mean.")]
OwlLambdaOpt = Annotated[
    float, typer.Option("--owl-lambda", help="OWL: block sparsities span target +- lambda.")
]
RunDeviceOpt = Annotated[Device, typer.Option("--device", help="Where alphas are computed, masks chosen and the model runs (wanda, owl).")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace OUT if it holds an earlier htsr prune output.")
]


def prune(
    checkpoint: CheckpointArg,
    output: OutDirOpt,
    target: TargetOpt = None,
    allocation: AllocationOpt = "alphapruning",
    method: MethodOpt = Method.magnitude,
    calibration: CalibrationOpt = None,
    samples: SamplesOpt = 128,
    seq_len: SeqLenOpt = 512,
    epsilon: EpsilonOpt = 0.3,
    granularity: GranularityOpt = Granularity.block,
    metric: PruneMetricOpt = Metric.alpha,
    xmin: XminOpt = Xmin.peak,
    no_clip: NoClipOpt = False,
    include_ends: IncludeEndsOpt = False,
    owl_m: OwlMOpt = 5.0,
    owl_lambda: OwlLambdaOpt = 0.08,
    device: RunDeviceOpt = Device.auto,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Prune a checkpoint to a target sparsity and save it in the same layout (loads with from_pretrained).

    Memory: magnitude pruning holds one tensor at a time (safetensors; a torch file's pruned tensors);
    wanda and owl hold the embeddings until the first block's inputs are captured, then one block plus
    2 x samples x seq-len x hidden activations, whatever the depth of the model.

    [bold]Examples:[/bold]
      htsr prune ./llama-7b --target 0.7 -o llama-7b-pruned
      htsr prune ./llama-7b --target 0.7 --method wanda --calibration c4.txt -o llama-7b-wanda
      htsr prune ./llama-7b --target 0.7 --allocation owl --method wanda --calibration c4.txt -o llama-7b-owl
      htsr prune ./llama-7b --allocation plan.json -o llama-7b-planned
    """
    from htsr_cli.pruning import CalibrationSettings, OwlSettings, PruneSettings, prune_checkpoint
    from htsr_cli.settings import AnalyzeSettings, FarmsSettings

    settings = PruneSettings(
        target=target,
        allocation=allocation,
        method=method.value,
        epsilon=epsilon,
        granularity=granularity.value,
        clip=not no_clip,
        analysis=AnalyzeSettings(
            xmin=xmin.value, farms=FarmsSettings() if metric is Metric.alpha_farms else None, device=device.value
        ),
        owl=OwlSettings(owl_m, owl_lambda),
        calibration=CalibrationSettings(calibration, samples, seq_len) if calibration is not None else None,
        overwrite=overwrite,
        include_ends=include_ends,
    )
    with layer_progress(quiet, "pruning", unit="") as progress:
        record = prune_checkpoint(checkpoint, output, settings, progress=progress)
    emit_renderable(_summary_table(record, table_width(None)), None)


def _summary_table(record: dict, width: int | None):
    settings, summary = record["settings"], record["summary"]
    score = [Column("outlier_ratio", "outliers %", 3)] if settings["allocation"] == "owl" else []
    if settings.get("alphapruning"):
        metric = settings["alphapruning"]["metric"]
        score = [Column(metric, metric, 3), Column("score", "block mean", 3)]
    columns = [
        Column("name", "module", justify="left"),
        Column("params", "params"),
        *score,
        Column("target_ratio", "target", 4),
        Column("achieved_ratio", "achieved", 4),
        Column("note", "note", justify="left"),
    ]
    caption = (
        f"{settings['method']} pruning, {settings['allocation']} allocation: {summary['zeros']:,} of "
        f"{summary['params']:,} weights zeroed in {summary['pruned_matrices']} matrices | sparsity "
        f"{summary['achieved']:.4f} (target {settings['target']:.4f}) | range [{summary['min_ratio']:.4f}, "
        f"{summary['max_ratio']:.4f}] | not pruned {summary['excluded']} | -> {record['output']}"
    )
    return terminal_table(columns, record["layers"], width, notes=[caption], keep=("name", "achieved_ratio", "note"),
                          drop_order=("params", "score", "outlier_ratio", "target_ratio", *[c.key for c in score]))
