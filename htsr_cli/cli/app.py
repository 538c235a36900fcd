"""The `htsr` entry point: the root command and the registry of subcommands.

    htsr analyze fixtures/tiny-cnn-trained.pth
    htsr --version
"""

from __future__ import annotations

from typing import Annotated

import typer

from htsr_cli import __version__
from htsr_cli.cli import analyze, describe, report
from htsr_cli.cli import compare, gate
from htsr_cli.cli import allocate, lr_schedule
from htsr_cli.cli import convert, diagnose, evaluate, prune
from htsr_cli.cli import ensemble, landscape
from htsr_cli.cli import allocate_bits, quantize, smooth
from htsr_cli.cli import track
from htsr_cli.cli._errors import USAGE_ERROR, FunnelGroup
from htsr_cli.cli._options import FlagsWithoutType, HtsrCommand, TwoColumnHelp


class RootGroup(FlagsWithoutType, TwoColumnHelp, FunnelGroup):
    """`htsr`: the error funnel, and help that lists flags without a type in two columns."""


app = typer.Typer(
    cls=RootGroup,
    name="htsr",
    invoke_without_command=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # htsr --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"htsr {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Diagnose trained neural networks from their weights alone (Heavy-Tailed Self-Regularization).

    [bold]Examples:[/bold]
      htsr analyze fixtures/tiny-cnn-trained.pth
      htsr describe ./my-hf-model
      htsr report ./my-hf-model -o report.html
      htsr allocate sparsity ./llama-7b --target 0.7
      htsr lr-schedule export model.pth --base-lr 0.1 -o schedule.json
      htsr gate model.safetensors --baseline main-report.json
      htsr compare base.safetensors finetuned.safetensors
      htsr track runs/my-finetune --plot alpha.png
      htsr --install-completion
    """
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(USAGE_ERROR)


# Subcommands: one module each. Command modules import torch-backed code inside
# the command functions, so `htsr --version`, `--help` and the commands that only
# read saved reports (gate, compare) start in a fraction of torch's import time.
app.command("analyze", cls=HtsrCommand)(analyze.analyze)
app.command("describe", cls=HtsrCommand)(describe.describe)
app.command("report", cls=HtsrCommand)(report.report)
app.command("gate", cls=HtsrCommand)(gate.gate)
app.command("compare", cls=HtsrCommand)(compare.compare)
allocate.app.command("bits", cls=HtsrCommand)(allocate_bits.bits)
app.add_typer(allocate.app, name="allocate")
app.add_typer(lr_schedule.app, name="lr-schedule")
app.command("prune", cls=HtsrCommand)(prune.prune)
app.command("quantize", cls=HtsrCommand)(quantize.quantize)
app.command("smooth", cls=HtsrCommand)(smooth.smooth)
app.command("convert", cls=HtsrCommand)(convert.convert)
app.add_typer(evaluate.app, name="eval")
app.command("diagnose", cls=HtsrCommand)(diagnose.diagnose)
app.command("landscape", cls=HtsrCommand)(landscape.landscape)
app.command("ensemble", cls=HtsrCommand)(ensemble.ensemble)
app.command("track", cls=HtsrCommand)(track.track)

__all__ = ["app"]
