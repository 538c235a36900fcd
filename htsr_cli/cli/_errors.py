"""The single error funnel: a user's mistake becomes one line on stderr and exit code 2.

What reaches it: `HtsrError` raised by the library (a missing file, a bad
regex, an out-of-range value), click's usage errors (an unknown option, a
value outside a choice), OS errors that name a file, a stdout that cannot be
written (closed, full, a pipe whose reader has gone), and interrupts. Each
prints `htsr: error: ...` (or `htsr: interrupted`) and exits 2 (130 for
Ctrl-C, 143 for SIGTERM). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
from typing import Any

import click
import typer
from typer.core import TyperGroup

from htsr_cli.cli._options import as_flag
from htsr_cli.cli._signals import Terminated, announce, raise_if_stopped, stopping_signal
from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.io import command_files, os_reason
from htsr_cli.render.outputs import printable

USAGE_ERROR = 2
STDOUT = "<stdout>"


def report_error(text: str) -> None:
    """`htsr: error: <one line>` on stderr; the line is escaped, so no name can forge a second one."""
    text = str(text).strip()
    say(f"error: {printable(text) if text else 'unknown error'}")


def say(text: str) -> None:
    """`htsr: TEXT` on stderr, flushed at once, never failing (stderr itself may be closed)."""
    try:
        sys.stderr.write(f"htsr: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def stdout_error(error: OSError) -> HtsrError:
    """A failed write of results to stdout, in the same words as a file's."""
    if error.errno == errno.EPIPE:
        _detach_stdout()
        return HtsrError(f"{STDOUT}: broken pipe (the program reading the output exited)")
    return HtsrError(f"{STDOUT}: {os_reason(error)}")


def _detach_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that flush
    # cannot fail a second time with a traceback.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def flush_stdout(code: int) -> int:
    """Flush results still buffered for stdout; a failure there is reported like any other."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as error:
        report_error(str(stdout_error(error)))
        return USAGE_ERROR
    return code


def _debugging(ctx: typer.Context | None) -> bool:
    root = ctx.find_root() if ctx is not None else None
    return bool(os.environ.get("HTSR_DEBUG") or (root is not None and root.params.get("debug")))


class FunnelGroup(TyperGroup):
    """The root command group; `--debug` (or HTSR_DEBUG=1) lets tracebacks through."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            raise_if_stopped()
            with command_files():  # what the command reads, no output of it may replace
                return super().invoke(ctx)
        except KeyboardInterrupt:  # typer would turn it into a silent exit 130
            raise typer.Exit(announce(signal.SIGINT)) from None
        except Terminated:
            raise typer.Exit(announce(stopping_signal() or signal.SIGTERM)) from None
        except (HtsrError, OSError) as error:
            if _debugging(ctx):
                raise
            problem = _as_user_error(error)
            if problem is None:
                raise
            # The library names parameters (min_evals=1); the command line names flags.
            report_error(as_flag(problem) if isinstance(problem, InvalidSetting) else str(problem))
            raise typer.Exit(getattr(problem, "exit_code", USAGE_ERROR)) from None

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
            code = result if isinstance(result, int) else 0
        except typer.Exit as exit_:
            code = exit_.exit_code
        except typer.TyperException as error:  # typer's own click usage errors
            command = error.ctx.command_path if getattr(error, "ctx", None) else "htsr"
            lines = error.format_message().strip().splitlines() or ["unknown error"]
            report_error(f"{plain_usage_error(lines[0])} (see '{command} --help')")
            code = getattr(error, "exit_code", USAGE_ERROR)
        except (typer.Abort, click.exceptions.Abort, KeyboardInterrupt):
            code = announce(signal.SIGINT)
        except Terminated:
            code = announce(stopping_signal() or signal.SIGTERM)
        except OSError as error:  # writing --help or --version to a closed or broken stdout
            problem = _as_user_error(error)
            if problem is None:
                raise
            report_error(str(problem))
            code = USAGE_ERROR
        if standalone_mode:
            sys.exit(code)
        return code


# typer checks option values with pydantic and words its errors that way ("Value error, 'foo' is
# not one of 'ks', 'median'.", "Input should be a valid integer, unable to parse string as an integer").
_NOT_A_CHOICE = re.compile(r"^Invalid value for '([^']+)'(?: / '[^']+')*: (?:Value error, )?'(.*)' is not one of (.*?)\.?$")
_NOT_A_TYPE = re.compile(r"^Invalid value for '([^']+)'(?: / '[^']+')*: (?:Value error, )?Input should be a valid (\w+)\b.*$")
_TYPE_NAMES = {"integer": "an integer", "number": "a number", "boolean": "true or false"}


def plain_usage_error(line: str) -> str:
    """A click/typer usage error in htsr's words: `--xmin foo: must be one of ks, median, peak`."""
    choice = _NOT_A_CHOICE.match(line)
    if choice:
        flag, value, choices = choice.groups()
        return f"{flag} {printable(value)}: must be one of {choices.replace(chr(39), '')}"
    kind = _NOT_A_TYPE.match(line)
    if kind:
        flag, name = kind.groups()
        return f"{flag}: must be {_TYPE_NAMES.get(name, 'a valid ' + name)}"
    return line


def _as_user_error(error: BaseException) -> HtsrError | None:
    """The one-line form of an error the user can act on, or None for a bug."""
    if isinstance(error, HtsrError):
        return error
    if isinstance(error, OSError):
        if error.filename is not None:
            return HtsrError(f"{os.fsdecode(error.filename)}: {os_reason(error)}")
        if error.errno in (errno.EPIPE, errno.EBADF, errno.ENOSPC, errno.EIO):
            return stdout_error(error)
    return None
