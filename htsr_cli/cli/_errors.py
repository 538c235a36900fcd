"""The single error funnel: a user's mistake becomes one line on stderr and exit code 2."""

from __future__ import annotations

import os
import sys

import click
from typer.core import TyperGroup

from htsr_cli.errors import HtsrError

USAGE_ERROR = 2


def report_error(message: str) -> None:
    first_line = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    click.echo(f"htsr: error: {first_line}", err=True)


class FunnelGroup(TyperGroup):
    """Runs a command and turns `HtsrError` (and a few OS errors on user paths) into exit 2.

    `--debug` on the root command, or HTSR_DEBUG=1, lets the traceback through.
    """

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except HtsrError as error:
            if ctx.params.get("debug") or os.environ.get("HTSR_DEBUG"):
                raise
            report_error(str(error))
            sys.exit(USAGE_ERROR)
        except KeyboardInterrupt:
            click.echo("htsr: interrupted", err=True)
            sys.exit(130)
