"""The single output funnel: results to stdout or a file, progress to stderr."""

from __future__ import annotations

import errno
import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from htsr_cli.cli._errors import STDOUT, stdout_error
from htsr_cli.cli._signals import raise_if_stopped
from htsr_cli.errors import HtsrError
from htsr_cli.io import write_atomic
from htsr_cli.outputs import printable

class _Console(Console):
    """rich's Console, but a broken pipe is reported like any stdout error (rich would exit 1,
    which the gate's callers read as 'rule violated')."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


stdout_console = _Console(highlight=False)
if not stdout_console.is_terminal:
    # Piped into a log or a file: never truncate layer names to 80 columns.
    stdout_console = _Console(highlight=False, width=240)
stderr_console = _Console(stderr=True, highlight=False)


@contextmanager
def _writing_stdout() -> Iterator[None]:
    """Results go to stdout: a closed, full or broken stdout is an error like a bad -o file."""
    if sys.stdout is None:
        raise HtsrError(f"{STDOUT}: closed; write the result to a file with -o FILE")
    try:
        yield
        sys.stdout.flush()
    except OSError as error:
        raise stdout_error(error) from None


def emit_text(text: str, output: Path | None) -> None:
    """Machine formats: exact text to stdout, or atomically to `output`."""
    raise_if_stopped()  # no results from a run the user has interrupted
    if output is None:
        with _writing_stdout():
            sys.stdout.write(text)
    else:
        write_atomic(output, text)


def emit_renderable(renderable: RenderableType, output: Path | None) -> None:
    """Human formats: coloured on a terminal; plain text when written to a file."""
    raise_if_stopped()
    if output is None:
        with _writing_stdout():
            stdout_console.print(renderable)
        return
    buffer = io.StringIO()
    Console(file=buffer, width=200, no_color=True, highlight=False).print(renderable)
    write_atomic(output, buffer.getvalue())


@contextmanager
def layer_progress(quiet: bool, description: str = "analysing") -> Iterator:
    """A progress callback (done, total, layer) drawing a bar on stderr when it is a terminal."""
    if quiet or not stderr_console.is_terminal:
        yield None
        return
    progress = Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("layers"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[layer]}", markup=False),  # layer names are data, not rich markup
        console=stderr_console,
        transient=True,
    )
    task = progress.add_task(description, total=None, layer="")

    def update(done: int, total: int, layer: str) -> None:
        progress.update(task, completed=done, total=total, layer=printable(layer))

    with progress:
        yield update


def print_timings(timings) -> None:
    """The `--profile` breakdown, on stderr so it never mixes with results."""
    stages = timings.to_json()
    parts = " | ".join(
        f"{stage} {value:.3f} s" if isinstance(value, float) else f"{stage} {value}" for stage, value in stages.items()
    )
    stderr_console.print(
        f"profile: {parts} (read/transfer run on a loader thread beside the solves; "
        "solve/fit/farms add up over concurrent solves and fit threads)"
    )
