"""The single output funnel: results to stdout or a file, progress and notes to stderr."""

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
from htsr_cli.render.outputs import printable, workflow_safe

class _Console(Console):
    """rich's Console, but a broken pipe is reported like any stdout error (rich would exit 1,
    which the gate's callers read as 'rule violated')."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


stdout_console = _Console(highlight=False)
stderr_console = _Console(stderr=True, highlight=False)
PLAIN_MIN_WIDTH = 80
PLAIN_MAX_WIDTH = 100_000  # no table is wider; only bounds rich's measuring


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


def table_width(output: Path | None) -> int | None:
    """The width to fit tables to: the terminal's, or None (no limit) for pipes and files."""
    return stdout_console.width if output is None and stdout_console.is_terminal else None


def render_plain(renderable: RenderableType) -> str:
    """Text for pipes and files: no colour, and as wide as the content, so nothing wraps or is cut."""
    measure = Console(file=io.StringIO(), width=PLAIN_MAX_WIDTH, no_color=True, highlight=False)
    width = max(measure.measure(renderable).maximum, PLAIN_MIN_WIDTH)
    buffer = io.StringIO()
    Console(file=buffer, width=width, no_color=True, highlight=False).print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().split("\n"))


def wrote(path: Path | str, quiet: bool, what: str = "") -> None:
    """`wrote PATH` on stderr after a file is written, unless --quiet."""
    if not quiet:
        stderr_console.print(f"wrote {path}{what}", markup=False, highlight=False, soft_wrap=True)


def emit_text(text: str, output: Path | None, quiet: bool = False, commands: bool = False) -> None:
    """Machine formats: exact text to stdout, or atomically to `output`.

    Either may end up in a CI log, so no line of it can run as a workflow
    command (`workflow_safe`; `commands` for gate's own GitHub annotations).
    """
    raise_if_stopped()  # no results from a run the user has interrupted
    text = workflow_safe(text, commands)
    if output is None:
        with _writing_stdout():
            sys.stdout.write(text)
    else:
        write_atomic(output, text)
        wrote(output, quiet)


def emit_renderable(renderable: RenderableType, output: Path | None, quiet: bool = False) -> None:
    """Human formats: coloured on a terminal; plain, unwrapped text when piped or written to a file."""
    raise_if_stopped()
    if output is None and stdout_console.is_terminal:
        with _writing_stdout():
            stdout_console.print(renderable)
        return
    emit_text(render_plain(renderable), output, quiet)


@contextmanager
def layer_progress(quiet: bool, description: str = "analyzing", unit: str = "layers") -> Iterator:
    """A progress callback (done, total, item) drawing a bar on stderr when it is a terminal.

    Every call first acts on a pending stop (Ctrl-C, SIGTERM) whose exception
    some library swallowed, so each loop that reports progress (analysis,
    drawing, pruning, scoring) ends within one step of a signal, bar or not.
    """
    if quiet or not stderr_console.is_terminal:
        yield lambda done, total, layer: raise_if_stopped()
        return
    progress = Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("{task.fields[layer]}", markup=False),  # layer names are data, not rich markup
        console=stderr_console,
        transient=True,
    )
    task = progress.add_task(description, total=None, layer="")

    def update(done: int, total: int, layer: str) -> None:
        raise_if_stopped()
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



def note(text: str, quiet: bool) -> None:
    """A one-line remark on stderr (never mixed with results), unless --quiet."""
    if not quiet:
        stderr_console.print(f"note: {text}", markup=False, highlight=False, soft_wrap=True)


def note_missing_glyphs(missing: set[str], quiet: bool) -> None:
    """One line for every character the plot font lacked, instead of one matplotlib warning each."""
    if missing:
        shown = "".join(sorted(missing)[:10]).encode("unicode_escape").decode("ascii")
        note(f"{len(missing)} characters of layer names are not in the plot font and show as boxes ({shown})", quiet)
