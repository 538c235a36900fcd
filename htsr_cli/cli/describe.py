"""htsr describe: the layers `htsr analyze` would solve and skip, from the checkpoint's headers (examples in the help)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from htsr_cli.checkpoints.sources import check_source
from htsr_cli.cli._analysis_options import analysis_options
from htsr_cli.cli._options import CheckpointArg, MergedOpt, OutputOpt, QuietOpt
from htsr_cli.cli._output import emit_renderable, emit_text, table_width
from htsr_cli.cli._reports import checkpoint_source
from htsr_cli.io import check_output_paths
from htsr_cli.render.describe import describe_csv, describe_markdown, describe_table
from htsr_cli.settings import AnalyzeSettings


class DescribeFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


@analysis_options
def describe(
    checkpoint: CheckpointArg,
    output_format: Annotated[DescribeFormat, typer.Option("--format", "-f", help="Output format (json: htsr.describe/1).")] = DescribeFormat.table,
    output: OutputOpt = None,
    settings: AnalyzeSettings = AnalyzeSettings(),
    merged: MergedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """List the weight matrices `htsr analyze` would solve (kind, shape, eigenvalues, storage) and why it
    would skip the others, without solving anything.

    Reads headers only where the format has them (safetensors, GGUF, ONNX); a
    torch file's pickle is unpickled with its tensors memory-mapped; the output
    says what was read. Takes analyze's options: --layers, --min-evals and the
    memory budget (--max-memory, --device, --precision, --xmin, --farms) change
    what would be skipped.

    [bold]Examples:[/bold]
      htsr describe fixtures/tiny-cnn-trained.pth
      htsr describe ./my-hf-model --min-evals 50 --layers 'layers\\.0\\.'
      htsr describe model.gguf -f json -o layers.json
    """
    check_source(checkpoint)
    source = checkpoint_source(checkpoint, merged)
    check_output_paths({"-o": output}, [checkpoint, *([merged] if merged else [])])
    from htsr_cli.engine.describe import describe as describe_checkpoint  # lazy torch, see app.py

    description = describe_checkpoint(source, settings)
    if output_format is DescribeFormat.table:
        emit_renderable(describe_table(description, table_width(output)), output, quiet)
    elif output_format is DescribeFormat.json:
        emit_text(description.dumps(), output, quiet)
    elif output_format is DescribeFormat.csv:
        emit_text(describe_csv(description), output, quiet)
    else:
        emit_text(describe_markdown(description), output, quiet)
