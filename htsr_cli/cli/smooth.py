"""htsr smooth: keep each weight matrix's largest singular values (WeightWatcher's SVDSmoothing) and save
the checkpoint again in its own layout.

    htsr smooth ./llama-7b --percent 0.8 -o llama-7b-smoothed
    htsr smooth ./llama-7b --method detx -o llama-7b-detx
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from htsr_cli.cli._options import CheckpointArg, Device, QuietOpt
from htsr_cli.cli._output import emit_renderable, layer_progress, table_width
from htsr_cli.errors import HtsrError
from htsr_cli.render.outputs import Column
from htsr_cli.render.terminal import terminal_table


class Method(str, Enum):
    percent = "percent"
    detx = "detx"


OutDirOpt = Annotated[
    Path,
    typer.Option(
        "--output", "-o", file_okay=False, show_default=False,
        help="Directory to write the smoothed checkpoint and htsr-smooth.json to (created; must be new or empty).",
    ),
]
PercentOpt = Annotated[
    Optional[float],
    typer.Option(
        "--percent", show_default="none",
        help="Keep this fraction of each matrix's singular values, in (0, 1) (WeightWatcher's percent).",
    ),
]
MethodOpt = Annotated[
    Optional[Method],
    typer.Option(
        "--method", show_default="percent with --percent",
        help="percent: keep --percent of them; detx: keep the tail that satisfies the detX condition (det X = 1).",
    ),
]
RunDeviceOpt = Annotated[Device, typer.Option("--device", help="Where the decompositions run.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it holds an earlier htsr smooth output.")]


def smooth(
    checkpoint: CheckpointArg,
    output: OutDirOpt,
    percent: PercentOpt = None,
    method: MethodOpt = None,
    device: RunDeviceOpt = Device.auto,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Replace each weight matrix by its best low-rank approximation (SVD smoothing, as WeightWatcher 0.7.7's
    SVDSmoothing) and save the checkpoint in the same layout; `htsr eval perplexity` measures the effect.

    Linear, embedding and conv weights with 8 to 15,000 eigenvalues are smoothed, a conv kernel
    one kernel position at a time; everything else is copied. Memory: one matrix at a time.

    [bold]Examples:[/bold]
      htsr smooth ./llama-7b --percent 0.8 -o llama-7b-smoothed
      htsr smooth ./llama-7b --method detx -o llama-7b-detx
      htsr eval perplexity llama-7b-detx --text wiki.test.txt
    """
    from htsr_cli.pruning.smoothing import SmoothSettings, smooth_checkpoint

    if method is None and percent is None:
        raise HtsrError("htsr smooth: say how many singular values to keep: --percent P (a fraction) or --method detx")
    chosen = method.value if method is not None else Method.percent.value
    settings = SmoothSettings(chosen, percent, device.value, overwrite)
    with layer_progress(quiet, "smoothing", unit="") as progress:
        record = smooth_checkpoint(checkpoint, output, settings, progress=progress)
    emit_renderable(_summary_table(record, table_width(None)), None)


def _summary_table(record: dict, width: int | None):
    settings, summary = record["settings"], record["summary"]
    columns = [
        Column("name", "module", justify="left"),
        Column("kind", "kind", justify="left"),
        Column("num_evals", "evals"),
        Column("count", "kept of ESD"),
        Column("kept_per_slice", "rank kept"),
        Column("relative_change", "rel. change", 4),
        Column("note", "note", justify="left"),
    ]
    how = f"percent {settings['percent']}" if settings["method"] == "percent" else "detX condition"
    largest = summary["max_relative_change"]
    caption = (
        f"SVD smoothing ({how}): {summary['smoothed_matrices']} matrices smoothed, {summary['unchanged']} kept "
        f"whole, {summary['excluded']} not in scope"
        + (f" | largest ||W - W'|| / ||W|| {largest:.4f}" if largest is not None else "")
        + f" | -> {record['output']}"
    )
    return terminal_table(columns, record["layers"], width, notes=[caption], keep=("name", "count", "note"),
                          drop_order=("kind", "num_evals", "relative_change", "kept_per_slice"))
