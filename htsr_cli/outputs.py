"""How results leave: one set of rows rendered as a rich table, CSV, markdown or JSON.

Every command describes its output once as `Column`s over row dicts; the same
numbers then appear in every format.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    digits: int | None = None  # decimals shown in tables and markdown; CSV/JSON keep full precision
    justify: str = "right"


def format_cell(value: Any, digits: int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if digits is not None:
            return f"{value:.{digits}f}"
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(item) for item in value)
    return str(value)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "x".join(str(item) for item in value)
    if isinstance(value, float):
        return repr(value)
    return value


def to_csv(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([column.key for column in columns])
    for row in rows:
        writer.writerow([_csv_cell(row.get(column.key)) for column in columns])
    return buffer.getvalue()


def to_markdown(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    header = "| " + " | ".join(column.header for column in columns) + " |"
    rule = "|" + "|".join("---:" if column.justify == "right" else "---" for column in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [format_cell(row.get(column.key), column.digits).replace("|", "\\|") for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_rich_table(
    columns: Sequence[Column],
    rows: Sequence[dict[str, Any]],
    title: str | None = None,
    style: Callable[[dict[str, Any], str], str | None] | None = None,
    caption: str | None = None,
) -> Table:
    table = Table(title=title, caption=caption, caption_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column.header, justify=column.justify, no_wrap=column.justify == "right")
    for row in rows:
        cells = []
        for column in columns:
            text = format_cell(row.get(column.key), column.digits)
            cells.append(Text(text, style=(style(row, column.key) if style else None) or ""))
        table.add_row(*cells)
    return table


def dumps_json(data: Any) -> str:
    return json.dumps(_finite_or_null(data), indent=2) + "\n"


def _finite_or_null(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so strict parsers accept the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value
