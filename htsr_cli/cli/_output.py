"""The single output funnel: results to stdout or a file, progress and notes to stderr."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from htsr_cli.io import write_atomic

stdout_console = Console(highlight=False)
stderr_console = Console(stderr=True, highlight=False)
PLAIN_MIN_WIDTH = 80
PLAIN_MAX_WIDTH = 100_000  # no table is wider; only bounds rich's measuring


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


def emit_text(text: str, output: Path | None, quiet: bool = False) -> None:
    """Machine formats: exact text to stdout, or atomically to `output`."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomic(output, text)
        wrote(output, quiet)


def emit_renderable(renderable: RenderableType, output: Path | None, quiet: bool = False) -> None:
    """Human formats: coloured on a terminal; plain, unwrapped text when piped or written to a file."""
    if output is None and stdout_console.is_terminal:
        stdout_console.print(renderable)
        return
    emit_text(render_plain(renderable), output, quiet)


@contextmanager
def layer_progress(quiet: bool, description: str = "analyzing") -> Iterator:
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
        TextColumn("{task.fields[layer]}", markup=False),
        console=stderr_console,
        transient=True,
    )
    task = progress.add_task(description, total=None, layer="")

    def update(done: int, total: int, layer: str) -> None:
        progress.update(task, completed=done, total=total, layer=layer)

    with progress:
        yield update


def print_timings(timings) -> None:
    """The `--profile` breakdown, on stderr so it never mixes with results."""
    stages = timings.to_json()
    parts = " | ".join(f"{stage} {seconds:.3f} s" for stage, seconds in stages.items())
    stderr_console.print(f"profile: {parts} (read/transfer overlap solve/fit on a loader thread)")


def note(text: str, quiet: bool) -> None:
    """A one-line remark on stderr (never mixed with results), unless --quiet."""
    if not quiet:
        stderr_console.print(f"note: {text}", markup=False, highlight=False, soft_wrap=True)


def note_missing_glyphs(missing: set[str], quiet: bool) -> None:
    """One line for every character the plot font lacked, instead of one matplotlib warning each."""
    if missing:
        shown = "".join(sorted(missing)[:10]).encode("unicode_escape").decode("ascii")
        note(f"{len(missing)} characters of layer names are not in the plot font and show as boxes ({shown})", quiet)
