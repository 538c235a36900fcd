"""`htsr describe` as a table, CSV or markdown (JSON: `Description.dumps`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Group

from htsr_cli.render.outputs import Column, markdown_code, markdown_text, to_csv, to_markdown
from htsr_cli.render.terminal import terminal_table

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
    return terminal_table(
        COLUMNS, _rows(description), width,
        title=f"htsr describe: {description.checkpoint}",
        notes=[reads_line(description)],
        summary=summary_line(description),
        keep=("name", "status"), drop_order=DROP_ORDER, style=_style,
    )


def describe_markdown(description: Description) -> str:
    return (
        f"## htsr describe: {markdown_code(description.checkpoint)}\n\n"
        + to_markdown(COLUMNS, _rows(description))
        + f"\n{markdown_text(summary_line(description))}\n\n{markdown_text(reads_line(description))}\n"
    )


def describe_csv(description: Description) -> str:
    return to_csv([Column(key, key) for key in CSV_KEYS], _rows(description))
