"""How results leave: one set of rows rendered as a rich table, CSV or markdown (JSON: results.documents).

Every command describes its output once as `Column`s over row dicts; the same
numbers then appear in every format.
"""

from __future__ import annotations

import csv
import io
import math
import re
import unicodedata
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


# Characters that must never reach a terminal, a log, a CSV record, XML or a
# workflow command as they are: control characters (ANSI/OSC escapes, BEL,
# NUL, newlines), invisible format characters (bidi overrides), line and
# paragraph separators, lone surrogates (undecodable file names) and the
# Unicode noncharacters XML forbids.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP's list:
# tab and carriage return never start a cell here, `printable` writes them as escapes).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A CI runner (GitHub Actions) takes a line of a job's log as a command when it
# starts, after blanks, with `::` (`::set-output name=verdict::pass`), or when it
# holds `##[` anywhere (the older syntax).
_WORKFLOW_COMMAND = "::"
_OLD_WORKFLOW_COMMAND = "##["


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` with every unprintable character written as a visible escape (`\\x1b`, `\\u202e`).

    The one sanitiser for text meant for people and line-based tools: tables,
    CSV, markdown, JUnit XML, GitHub annotations and error messages all pass
    checkpoint- and report-controlled strings through it. The old `##[` workflow-command
    marker is escaped too (`#\\x23[`); a line starting with `::` is `workflow_safe`'s business.
    """
    if _OLD_WORKFLOW_COMMAND in text:
        text = text.replace(_OLD_WORKFLOW_COMMAND, "#\\x23[")
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char == "\n" and keep_newlines:
            out.append(char)
        elif unicodedata.category(char) in _UNPRINTABLE_CATEGORIES:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def markdown_text(text: str) -> str:
    """A string for a markdown table cell or line: printable, no column breaks, no raw HTML."""
    return printable(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown_code(text: str) -> str:
    """`text` as an inline code span, fenced with more backticks than any run inside it."""
    text = printable(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


EMPTY_CELL = "-"  # how a table shows a missing value


def format_cell(value: Any, digits: int | None) -> str:
    if value is None:
        return EMPTY_CELL
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if digits is not None:
            return f"{value:.{digits}f}"
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(item) for item in value)
    return printable(str(value))


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "x".join(str(item) for item in value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        text = printable(value)
        neutralise = text.startswith(_FORMULA_STARTS) or text.lstrip().startswith(_WORKFLOW_COMMAND)
        return "'" + text if neutralise else text  # OWASP: a leading ' makes the cell text
    return value


def workflow_safe(text: str, commands: bool = False) -> str:
    """`text` (a whole output) with no line a CI runner would run as a workflow command.

    A line that starts with `::` after blanks gets a backslash before it; `##[`
    anywhere becomes `#\\x23[`. With `commands`, lines are the output's own
    commands (`htsr gate -f github`): those keep their `::` and only `##[` is escaped.
    Machine formats stay valid: JSON never has either (`dumps_json` escapes `##[`
    in its strings, and no JSON line starts with `::`), YAML is written unfolded,
    one entry a line, and CSV cells starting with `::` are quoted text already.
    """
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if _OLD_WORKFLOW_COMMAND in line:
            line = line.replace(_OLD_WORKFLOW_COMMAND, "#\\x23[")
        if not commands and line.lstrip().startswith(_WORKFLOW_COMMAND):
            line = "\\" + line
        lines[index] = line
    return "\n".join(lines)


def to_csv(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([column.key for column in columns])
    for row in rows:
        writer.writerow([_csv_cell(row.get(column.key)) for column in columns])
    return buffer.getvalue()


def to_markdown(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    header = "| " + " | ".join(markdown_text(column.header) for column in columns) + " |"
    rule = "|" + "|".join("---:" if column.justify == "right" else "---" for column in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [markdown_text(format_cell(row.get(column.key), column.digits)) for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


RowStyle = Callable[[dict[str, Any], str], "str | None"]  # (row, column key) -> a rich style for that cell


def to_rich_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]], style: RowStyle | None = None) -> Table:
    """The bare rich table; commands print it through `render.terminal.terminal_table`, which fits
    it to the terminal and puts the title and notes around it."""
    # Headers and cells go in as Text: a plain string would be parsed as rich
    # markup, and a layer named `model[/].pth` would crash the table.
    table = Table(header_style="bold")
    for column in columns:
        table.add_column(Text(printable(column.header)), justify=column.justify, no_wrap=column.justify == "right")
    for row in rows:
        cells = []
        for column in columns:
            text = format_cell(row.get(column.key), column.digits)
            cells.append(Text(text, style=(style(row, column.key) if style else None) or ""))
        table.add_row(*cells)
    return table
