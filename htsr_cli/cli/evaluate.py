"""htsr eval: measure a model, e.g. after `htsr prune`.

    htsr eval perplexity ./llama-7b-pruned --text wikitext-2-test.txt
    htsr eval perplexity ./gpt2 --text book.txt --seq-len 1024 --max-tokens 100000 --format json -o ppl.json
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from htsr_cli.cli._options import Device, HtsrCommand, HtsrGroup, OutputOpt, QuietOpt
from htsr_cli.cli._output import emit_renderable, emit_text, layer_progress, table_width
from htsr_cli.results.documents import dumps_json
from htsr_cli.render.outputs import Column
from htsr_cli.render.terminal import terminal_table

app = typer.Typer(cls=HtsrGroup, name="eval", help="Measure a model: perplexity on a text file.", no_args_is_help=True)


class EvalFormat(str, Enum):
    table = "table"
    json = "json"


ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="A Hugging Face directory (config, weights, tokenizer) or a cached hub id.",
        show_default=False,
    ),
]
TextOpt = Annotated[
    Path, typer.Option("--text", dir_okay=False, show_default=False, help="UTF-8 text file to score.")
]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="Tokens per window.")]
MaxTokensOpt = Annotated[
    Optional[int], typer.Option("--max-tokens", show_default="the whole text", help="Score only the first N tokens of the text.")
]
RunDeviceOpt = Annotated[Device, typer.Option("--device", help="Where the model runs.")]
FormatOpt = Annotated[EvalFormat, typer.Option("--format", "-f", help="Output format.")]


@app.command("perplexity", cls=HtsrCommand)
def perplexity(
    model: ModelArg,
    text: TextOpt,
    seq_len: SeqLenOpt = 512,
    max_tokens: MaxTokensOpt = None,
    device: RunDeviceOpt = Device.auto,
    output_format: FormatOpt = EvalFormat.table,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Perplexity on non-overlapping windows (causal LMs); pseudo-perplexity with one token masked at a
    time (masked LMs such as BERT). The output says which was used.

    [bold]Examples:[/bold]
      htsr eval perplexity ./gpt2 --text book.txt
      htsr eval perplexity ./llama-7b-pruned --text wiki.test.txt --seq-len 2048 --max-tokens 100000 -f json -o ppl.json
    """
    from htsr_cli.io import check_output_paths
    from htsr_cli.lm.perplexity import PerplexitySettings, evaluate_perplexity

    settings = PerplexitySettings(seq_len=seq_len, max_tokens=max_tokens, device=device.value)
    check_output_paths({"-o": output}, [text, model])
    with layer_progress(quiet, "scoring", unit="windows") as progress:
        result = evaluate_perplexity(model, text, settings, progress=progress)
    if output_format is EvalFormat.json:
        emit_text(dumps_json(result), output, quiet)
        return
    columns = [
        Column("model", "model", justify="left"),
        Column("metric", "metric", justify="left"),
        Column("perplexity", "value", 3),
        Column("mean_nll", "mean NLL", 4),
        Column("windows", "windows"),
        Column("tokens_scored", "tokens"),
    ]
    caption = f"{result['objective']} LM, {result['protocol']}; seq_len {result['seq_len']}, {result['dtype']} on {result['device']}"
    table = terminal_table(columns, [result], table_width(output), notes=[caption], name_key="model",
                           keep=("model", "perplexity"))
    emit_renderable(table, output, quiet)
