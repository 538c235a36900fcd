"""The one table renderer of every command: a table fitted to the terminal, its notes below it.

    terminal_table(columns, rows, width=80, title="htsr: model", notes=["xmin=ks"],
                   keep=("name", "alpha", "quality"), drop_order=("stable_rank", "alpha_weighted"))

The rules: the columns in `keep` always stay; the others are dropped one by one
in `drop_order` (default: the last column first) until the table fits, and a
footnote names them; the name column then takes the width that is left, and
names longer than that are cut in the middle, keeping the block
(`model.layers.3`) and the leaf (`down_proj`). A text column holding one value
on every row becomes a note instead. The title, notes and summary are lines of
their own, wrapped to the terminal's width, not the table's. With `width=None`
(output that is not a terminal) nothing is dropped or cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.text import Text

from htsr_cli.render.outputs import EMPTY_CELL, Column, RowStyle, format_cell, printable, to_rich_table

ELLIPSIS = "…"
NAME_WANTED = 40  # secondary columns go before the name column is cut below this
NAME_MIN = 24  # when nothing is left to drop, names are cut down to this
NAME_FLOOR = 12  # below NAME_MIN only when the kept columns leave no more room; never below this
WRAPPING_MIN = 13  # a wrapping text column (quality) keeps room for "under-trained"
PIPED_HINT = "piped output shows all"


def table_width(widths: Sequence[int]) -> int:
    """Total width of a rich table with these column widths: 1 space of padding
    either side of each cell and one border character between and around them."""
    return sum(widths) + 3 * len(widths) + 1


def _natural_width(column: Column, rows: Sequence[dict[str, Any]]) -> int:
    cells = [cell_len(format_cell(row.get(column.key), column.digits)) for row in rows]
    return max([cell_len(column.header), *cells])


def _fit_chars(text: str, width: int, from_end: bool) -> str:
    """The longest prefix (or suffix) of `text` that is at most `width` cells wide."""
    kept = ""
    for char in (reversed(text) if from_end else text):
        if cell_len(kept) + cell_len(char) > width:
            break
        kept = char + kept if from_end else kept + char
    return kept


def shorten_middle(name: str, width: int) -> str:
    """Cut a dotted module name to `width` cells in the middle, keeping its block and leaf.

    `model.layers.3.block_sparse_moe.experts.7.w2` at 28 cells is
    `model.layers.3…experts.7.w2`: the head up to the first numeric component
    (the block) and as many trailing components as fit. When even block + leaf
    do not fit, the leaf is kept whole and the head cut by characters.
    """
    if cell_len(name) <= width:
        return name
    if width <= 1:
        return ELLIPSIS[:width]
    parts = name.split(".")
    block_end = next((i for i, part in enumerate(parts) if part.isdigit()), 0)
    head = ".".join(parts[: block_end + 1])
    tail_parts = [parts[-1]]
    if block_end < len(parts) - 1 and cell_len(head) + 1 + cell_len(tail_parts[0]) <= width:
        for part in reversed(parts[block_end + 1 : -1]):
            longer = ".".join([part, *tail_parts])
            if cell_len(head) + 1 + cell_len(longer) > width:
                break
            tail_parts.insert(0, part)
        return f"{head}{ELLIPSIS}{'.'.join(tail_parts)}"
    leaf = parts[-1]
    if cell_len(leaf) + 1 >= width:
        return ELLIPSIS + _fit_chars(leaf, width - 1, from_end=True)
    return _fit_chars(name, width - 1 - cell_len(leaf), from_end=False) + ELLIPSIS + leaf


@dataclass(frozen=True)
class FittedTable:
    columns: list[Column]
    rows: list[dict[str, Any]]
    hidden: list[Column]  # dropped for width, in the order they were dropped


def fit_columns(
    columns: Sequence[Column],
    rows: Sequence[dict[str, Any]],
    width: int | None,
    keep: Sequence[str] = ("name",),
    drop_order: Sequence[str] = (),
    name_key: str = "name",
) -> FittedTable:
    """The columns and rows (names shortened) of a table that fits in `width` cells.

    Right-aligned (number) columns never wrap, so they count at their full
    width; left-aligned text columns other than the name may wrap down to
    WRAPPING_MIN. Columns are dropped while the name would get fewer than
    NAME_WANTED cells; with nothing left to drop, names are cut down to
    NAME_MIN, and below that rich wraps the `keep` columns.
    """
    columns, rows = list(columns), [dict(row) for row in rows]
    if width is None:
        return FittedTable(columns, rows, [])
    natural = {column.key: _natural_width(column, rows) for column in columns}

    def minimum(column: Column, name_floor: int = NAME_MIN) -> int:
        if column.key == name_key:
            return min(natural[column.key], name_floor)
        if column.justify == "left":
            return min(natural[column.key], WRAPPING_MIN)
        return natural[column.key]

    hidden: list[Column] = []
    for key in drop_order:
        if table_width([minimum(c, NAME_WANTED) for c in columns]) <= width:
            break
        dropped = next((c for c in columns if c.key == key and key not in keep), None)
        if dropped is not None:
            columns.remove(dropped)
            hidden.append(dropped)
    fixed = sum(natural[c.key] for c in columns if c.key != name_key and c.justify != "left")
    wrapping = [c for c in columns if c.key != name_key and c.justify == "left"]
    spare = width - table_width([0] * len(columns)) - fixed - sum(minimum(c) for c in wrapping)
    name_column = next((c for c in columns if c.key == name_key), None)
    if name_column is not None:
        # Names are cut to NAME_MIN before rich squeezes the kept columns, and further
        # (to NAME_FLOOR) only when that alone makes the table fit.
        floor = NAME_MIN if spare >= NAME_MIN or spare < NAME_FLOOR else spare
        name_width = max(min(natural[name_key], spare), min(natural[name_key], floor), 1)
        for row in rows:
            if isinstance(row.get(name_key), str):
                row[name_key] = shorten_middle(row[name_key], name_width)
    return FittedTable(columns, rows, hidden)


def hidden_note(hidden: Sequence[Column], width: int, hint: str = PIPED_HINT) -> str | None:
    """The footnote under a table that lost columns to the terminal width."""
    if not hidden:
        return None
    names = ", ".join(column.header for column in hidden)
    return f"hidden at {width} columns: {names} ({hint})"


def constant_columns(
    columns: Sequence[Column], rows: Sequence[dict[str, Any]], name_key: str
) -> tuple[list[Column], list[str]]:
    """The columns left after taking out the text columns that say the same on every row, and
    one note per column taken out (`status: compared on every row`): a 20-character
    column repeating one word tells no more than a line under the table. A column empty on
    every row ("-") goes without a note."""
    if len(rows) < 2:
        return list(columns), []
    shown, notes = [], []
    for column in columns:
        values = {format_cell(row.get(column.key), column.digits) for row in rows}
        if column.justify == "left" and column.key != name_key and len(values) == 1:
            value = values.pop()
            if value != EMPTY_CELL:
                notes.append(f"{column.header}: {value} on every row")
        else:
            shown.append(column)
    return shown, notes


def terminal_table(
    columns: Sequence[Column],
    rows: Sequence[dict[str, Any]],
    width: int | None,
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
    summary: str | None = None,
    name_key: str = "name",
    keep: Sequence[str] | None = None,
    drop_order: Sequence[str] | None = None,
    style: RowStyle | None = None,
    fold_constants: bool = True,
    hint: str = PIPED_HINT,
) -> Group:
    """A table for people: fitted to `width` (None: a pipe or a file, every column shown), the
    title above it, then the notes (each its own paragraph) and a bold summary line.

    `keep` defaults to the name column alone; `drop_order` to the other columns, last first.
    """
    keep = tuple(keep) if keep is not None else (name_key,)
    constant_notes: list[str] = []
    if fold_constants:
        columns, constant_notes = constant_columns(columns, rows, name_key)
    if drop_order is None:
        drop_order = [column.key for column in reversed(columns) if column.key not in keep]
    fitted = fit_columns(columns, rows, width, keep=keep, drop_order=drop_order, name_key=name_key)
    table = to_rich_table(fitted.columns, fitted.rows, style=style)
    for rich_column, column in zip(table.columns, fitted.columns):
        if column.key == name_key:
            rich_column.no_wrap = True  # already shortened to fit: never folded onto two lines
    parts: list[RenderableType] = []
    if title is not None:
        parts.append(Text(printable(title), style="bold"))
    parts.append(table)
    hidden = hidden_note(fitted.hidden, width or 0, hint)
    for note in [*notes, *constant_notes, *([hidden] if hidden else [])]:
        parts.append(Text(printable(note, keep_newlines=True)))
    if summary is not None:
        parts.append(Text(printable(summary), style="bold"))
    return Group(*parts)
