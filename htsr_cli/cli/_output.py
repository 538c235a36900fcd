"""The single output funnel: results to stdout or a file, progress to stderr."""

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
if not stdout_console.is_terminal:
    # Piped into a log or a file: never truncate layer names to 80 columns.
    stdout_console = Console(highlight=False, width=240)
stderr_console = Console(stderr=True, highlight=False)


def emit_text(text: str, output: Path | None) -> None:
    """Machine formats: exact text to stdout, or atomically to `output`."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomic(output, text)


def emit_renderable(renderable: RenderableType, output: Path | None) -> None:
    """Human formats: coloured on a terminal; plain text when written to a file."""
    if output is None:
        stdout_console.print(renderable)
        return
    buffer = io.StringIO()
    Console(file=buffer, width=200, no_color=True, highlight=False).print(renderable)
    write_atomic(output, buffer.getvalue())


@contextmanager
def layer_progress(quiet: bool, description: str = "analysing", unit: str = "layers") -> Iterator:
    """A progress callback (done, total, item) drawing a bar on stderr when it is a terminal."""
    if quiet or not stderr_console.is_terminal:
        yield None
        return
    progress = Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("{task.fields[layer]}"),
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
