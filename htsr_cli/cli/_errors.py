"""The single error funnel: a user's mistake becomes one line on stderr and exit code 2.

Two kinds of mistakes reach it: `HtsrError` raised by the library (a missing
file, a bad regex, an out-of-range value) and click's usage errors (an unknown
option, a value outside a choice). Both print `htsr: error: ...` and exit 2.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from htsr_cli.cli._options import as_flag
from htsr_cli.errors import HtsrError, InvalidSetting


USAGE_ERROR = 2


def report_error(message: str) -> None:
    lines = str(message).strip().splitlines()
    typer.echo(f"htsr: error: {lines[0] if lines else 'unknown error'}", err=True)


def _debugging(ctx: typer.Context | None) -> bool:
    root = ctx.find_root() if ctx is not None else None
    return bool(os.environ.get("HTSR_DEBUG") or (root is not None and root.params.get("debug")))


class FunnelGroup(TyperGroup):
    """The root command group; `--debug` (or HTSR_DEBUG=1) lets tracebacks through."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HtsrError as error:
            if _debugging(ctx):
                raise
            # The library names parameters (min_evals=1); the command line names flags.
            report_error(as_flag(error) if isinstance(error, InvalidSetting) else str(error))
            raise typer.Exit(USAGE_ERROR) from None

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
            code = result if isinstance(result, int) else 0
        except typer.Exit as exit_:
            code = exit_.exit_code
        except typer.TyperException as error:  # typer's own click usage errors
            command = error.ctx.command_path if getattr(error, "ctx", None) else "htsr"
            report_error(f"{error.format_message()} (see '{command} --help')")
            code = getattr(error, "exit_code", USAGE_ERROR)
        except (typer.Abort, KeyboardInterrupt):
            typer.echo("htsr: interrupted", err=True)
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code
