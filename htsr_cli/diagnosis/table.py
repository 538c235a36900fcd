"""A population of trained models as a CSV table (one configuration a row, the Model Diagnosis Dataset's columns).

Only the columns a caller asks for are read and checked: numbers must be
finite, labels must be one of the question's classes (or 'optimal', which
answers no question), and a table with no rows is refused. Every problem is
one `HtsrError` naming the file, the row (counted from 1 after the header) and
the column.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from htsr_cli.errors import HtsrError
from htsr_cli.io import PathLike, read_document


@dataclass(frozen=True)
class Population:
    source: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def has(self, column: str) -> bool:
        return column in self.header

    def numbers(self, column: str) -> np.ndarray:
        index = self._index(column)
        values = np.empty(len(self.rows))
        for number, row in enumerate(self.rows):
            cell = row[index].strip()
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise HtsrError(f"{self.source}: row {number + 1}, column '{column}': {cell!r} is not a finite number")
            values[number] = value
        return values

    def labels(self, column: str, allowed: Collection[str]) -> np.ndarray:
        index = self._index(column)
        values = np.array([row[index].strip() for row in self.rows], dtype=object)
        for number, value in enumerate(values):
            if value not in allowed:
                raise HtsrError(
                    f"{self.source}: row {number + 1}, column '{column}': unknown label {value!r} "
                    f"(expected one of {', '.join(sorted(allowed))})"
                )
        return values

    def _index(self, column: str) -> int:
        if column not in self.header:
            raise HtsrError(f"{self.source}: the column '{column}' is missing")
        return self.header.index(column)


def read_population(path: PathLike) -> Population:
    """The table at `path`: a header line, then at least one row with as many cells."""
    source = os.fsdecode(path)
    data = read_document(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise HtsrError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        lines = [line for line in csv.reader(io.StringIO(text, newline="")) if line]
    except csv.Error as error:
        raise HtsrError(f"{source}: not a valid CSV table ({error})") from None
    if not lines:
        raise HtsrError(f"{source}: the table is empty (no header line)")
    header = tuple(name.strip() for name in lines[0])
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise HtsrError(f"{source}: the column '{duplicates[0]}' appears more than once")
    for number, row in enumerate(lines[1:], start=1):
        if len(row) != len(header):
            raise HtsrError(f"{source}: row {number} has {len(row)} cells, the header {len(header)}")
    if len(lines) == 1:
        raise HtsrError(f"{source}: the table has no rows")
    return Population(source, header, tuple(tuple(row) for row in lines[1:]))
