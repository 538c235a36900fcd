"""htsr convert: a GGUF file into a Hugging Face safetensors directory (examples in the command's help)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from htsr_cli.cli._options import QuietOpt
from htsr_cli.cli._output import layer_progress, wrote


def convert(
    checkpoint: Annotated[str, typer.Argument(metavar="GGUF", help="A .gguf file (llama.cpp) of an architecture transformers can load.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The new (or empty) directory to write.", file_okay=False, show_default=False)],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier htsr convert output in --output.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Dequantize a GGUF file into a float32 Hugging Face safetensors directory, for prune, quantize and eval.

    transformers' own GGUF loader does the dequantization (it needs the
    `gguf` package, and `accelerate`); the model is built whole in memory. The
    weights keep the GGUF's quantization error: they are its dequantized values.

    [bold]Examples:[/bold]
      htsr convert SmolLM2-135M-Instruct.Q4_1.gguf -o smollm2-f32
      htsr prune smollm2-f32 --target 0.5 -o smollm2-pruned
    """
    from htsr_cli.pruning.convert import convert_gguf  # lazy torch, see app.py

    with layer_progress(quiet, "dequantizing", unit=""):
        record = convert_gguf(checkpoint, output, overwrite)
    wrote(output, quiet, f" ({record['architecture']}, {record['parameters']:,} float32 parameters)")
