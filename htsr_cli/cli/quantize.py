"""htsr quantize: apply a bits plan with round-to-nearest and write a compressed-tensors checkpoint.

    htsr allocate bits ./llama-7b --average 4 -f json -o bits.json
    htsr quantize ./llama-7b --plan bits.json -o llama-7b-rtn
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from htsr_cli.cli._options import CheckpointArg, QuietOpt
from htsr_cli.cli._output import emit_renderable, layer_progress, table_width
from htsr_cli.render.outputs import Column
from htsr_cli.render.terminal import terminal_table


class Method(str, Enum):
    rtn = "rtn"


OutDirOpt = Annotated[
    Path,
    typer.Option(
        "--output", "-o", file_okay=False, show_default=False,
        help="Directory to write the quantized checkpoint and htsr-quantize.json to (created; must be new or empty).",
    ),
]
PlanOpt = Annotated[
    Path,
    typer.Option("--plan", dir_okay=False, show_default=False, help="An htsr.bits/1 file from `htsr allocate bits -f json`."),
]
MethodOpt = Annotated[
    Method, typer.Option("--method", help="rtn: round-to-nearest on a min-max grid (for GPTQ, feed `-f llm-compressor` to llm-compressor).")
]
SymmetricOpt = Annotated[
    bool,
    typer.Option(
        "--symmetric/--asymmetric",
        help="Symmetric grid (scale only) or asymmetric (scale and zero point; htsr and compressed-tensors read it, "
        "transformers 5.25 does not load packed zero points).",
    ),
]
GroupSizeOpt = Annotated[
    Optional[int],
    typer.Option("--group-size", help="Input columns per scale (0: one scale per row).", show_default="the plan's"),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it holds an earlier htsr quantize output.")]


def quantize(
    checkpoint: CheckpointArg,
    output: OutDirOpt,
    plan: PlanOpt,
    method: MethodOpt = Method.rtn,
    symmetric: SymmetricOpt = True,
    group_size: GroupSizeOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Quantize a Hugging Face checkpoint by a bits plan (RTN) into a compressed-tensors directory.

    Matrices planned at 1..8 bits are packed (pack-quantized, int codes with a scale per
    group); at 16 bits they stay as stored. htsr, compressed-tensors and transformers read
    the result. Memory: one matrix at a time.

    [bold]Examples:[/bold]
      htsr allocate bits ./llama-7b --average 4 -f json -o bits.json
      htsr quantize ./llama-7b --plan bits.json -o llama-7b-rtn
      htsr quantize ./llama-7b --plan bits.json --group-size 64 -o llama-7b-rtn-g64
    """
    from htsr_cli.quantize import QuantizeSettings, quantize_checkpoint

    settings = QuantizeSettings(plan, method.value, symmetric, group_size, overwrite)
    with layer_progress(quiet, "quantizing", unit="") as progress:
        record = quantize_checkpoint(checkpoint, output, settings, progress=progress)
    emit_renderable(_summary_table(record, table_width(None)), None)


def _summary_table(record: dict, width: int | None):
    settings, summary = record["settings"], record["summary"]
    columns = [
        Column("tensor", "tensor", justify="left"),
        Column("params", "params"),
        Column("bits", "bits"),
        Column("relative_error", "rel. error", 4),
        Column("note", "note", justify="left"),
    ]
    grid = f"group {settings['group_size']}" if settings["group_size"] else "per row"
    caption = (
        f"{settings['method']} {'symmetric' if settings['symmetric'] else 'asymmetric'}, {grid}: "
        f"{summary['quantized']} matrices quantized, {summary['kept']} kept | {summary['weighted_mean_bits']:.4f} bits "
        f"on average over {summary['params']:,} params | -> {record['output']}"
    )
    return terminal_table(columns, record["layers"], width, notes=[caption], name_key="tensor",
                          keep=("tensor", "bits", "note"))
