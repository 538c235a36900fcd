"""`htsr describe` as a table, CSV or markdown (JSON: `Description.dumps`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.text import Text

from htsr_cli.render.outputs import Column, markdown_code, markdown_text, printable, to_csv, to_markdown, to_rich_table
from htsr_cli.render.terminal import fit_columns, hidden_note

if TYPE_CHECKING:  # rendering needs no torch
    from htsr_cli.engine.describe import Description

COLUMNS = [
    Column("name", "layer", justify="left"),
    Column("kind", "kind", justify="left"),
    Column("shape", "shape"),
    Column("num_evals", "#evals"),
    Column("params", "params"),
    Column("block", "block", justify="left"),
    Column("storage", "storage", justify="left"),
    Column("status", "status", justify="left"),
    Column("reason", "why skipped", justify="left"),
]
CSV_KEYS = ("name", "tensor", "kind", "shape", "num_evals", "params", "block", "storage", "dtype", "solve_bytes", "status", "reason")
# On a narrow terminal these go first; the layer and its status always show.
DROP_ORDER = ("block", "storage", "params", "shape", "kind")


def _rows(description: Description) -> list[dict[str, Any]]:
    return [layer.to_json() for layer in description.layers]


def summary_line(description: Description) -> str:
    summary = description.summary
    return (
        f"{summary['to_analyze']} of {summary['layers']} weight matrices to analyze "
        f"({summary['params_to_analyze']:,} params, {summary['num_evals']:,} eigenvalues), "
        f"{summary['skipped']} skipped; {description.tensors} tensors listed"
    )


def reads_line(description: Description) -> str:
    return f"read to list: {description.reads}"


def _style(row: dict[str, Any], key: str) -> str | None:
    return "yellow" if key in ("status", "reason") and row["status"] != "analyze" else None


def describe_table(description: Description, width: int | None = None) -> Group:
    fitted = fit_columns(COLUMNS, _rows(description), width, keep=("name", "status"), drop_order=DROP_ORDER)
    notes = [reads_line(description)]
    hidden = hidden_note(fitted.hidden, width or 0)
    if hidden:
        notes.append(hidden)
    table = to_rich_table(
        fitted.columns, fitted.rows, title=f"htsr describe: {description.checkpoint}", style=_style,
        caption="\n".join(notes),
    )
    for rich_column, column in zip(table.columns, fitted.columns):
        if column.key == "name":
            rich_column.no_wrap = True  # already shortened to fit
    return Group(table, Text(printable(summary_line(description)), style="bold"))


def describe_markdown(description: Description) -> str:
    return (
        f"## htsr describe: {markdown_code(description.checkpoint)}\n\n"
        + to_markdown(COLUMNS, _rows(description))
        + f"\n{markdown_text(summary_line(description))}\n\n{markdown_text(reads_line(description))}\n"
    )


def describe_csv(description: Description) -> str:
    return to_csv([Column(key, key) for key in CSV_KEYS], _rows(description))
