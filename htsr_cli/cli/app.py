"""The `htsr` entry point: the root command and the registry of subcommands.

    htsr analyze fixtures/tiny-cnn-trained.pth
    htsr --version
"""

from __future__ import annotations

from typing import Annotated

import typer

from htsr_cli import __version__
from htsr_cli.cli import analyze, report
from htsr_cli.cli import compare, gate
from htsr_cli.cli import allocate, lr_schedule
from htsr_cli.cli import evaluate, prune
from htsr_cli.cli._errors import USAGE_ERROR, FunnelGroup

app = typer.Typer(
    cls=FunnelGroup,
    name="htsr",
    help="Diagnose trained neural networks from their weights alone (Heavy-Tailed Self-Regularization).",
    invoke_without_command=True,
    pretty_exceptions_enable=False,
    add_completion=False,
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
    """Diagnose trained neural networks from their weights alone (HT-SR)."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(USAGE_ERROR)


# Subcommands: one module each. Command modules import torch-backed code inside
# the command functions, so `htsr --version`, `--help` and the commands that only
# read saved reports (gate, compare) start in a fraction of torch's import time.
app.command("analyze")(analyze.analyze)
app.command("report")(report.report)
app.command("gate")(gate.gate)
app.command("compare")(compare.compare)
app.add_typer(allocate.app, name="allocate")
app.add_typer(lr_schedule.app, name="lr-schedule")
app.command("prune")(prune.prune)
app.add_typer(evaluate.app, name="eval")


def main() -> None:
    app(prog_name="htsr")
