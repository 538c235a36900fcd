"""Saved documents read back (reports, schedules): parsed safely, every field's type checked.

A report or schedule file may come from anywhere (a CI artifact, a pull
request), so nothing in it is trusted: a wrong type, a non-finite number, an
unknown enum value or a document nested 100,000 levels deep is one
`HtsrError` naming the file, the entry and the field, never a traceback later.

    data = parse_json(read_document(path), path)
    check_fields(entry, LAYER_FIELDS, f"{path}: layer 3", required=("name",))
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from htsr_cli.errors import HtsrError
from htsr_cli.io import parse_json  # one parser for every document: size, depth, UTF-8 checked
from htsr_cli.settings import MAX_COUNT

_shown = reprlib.Repr()
_shown.maxstring = 60
_shown.maxother = 60


@dataclass(frozen=True)
class Kind:
    """What a field must hold: a test and the words for it in a message."""

    test: Callable[[Any], bool]
    expected: str

    def or_null(self) -> Kind:
        return Kind(lambda value: value is None or self.test(value), f"{self.expected} or null")




def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -MAX_COUNT <= value <= MAX_COUNT


def number(low: float = -math.inf, high: float = math.inf, *, above: bool = False) -> Kind:
    """A finite number in [low, high] (or (low, high] with `above`)."""

    def test(value: Any) -> bool:
        if not (_is_int(value) or isinstance(value, float)):
            return False
        try:
            if not math.isfinite(value):
                return False
        except OverflowError:  # a JSON integer with hundreds of digits: not a number htsr can use
            return False
        return (value > low if above else value >= low) and value <= high

    if math.isinf(low) and math.isinf(high):
        words = "a finite number"
    elif math.isinf(high):
        words = f"a finite number {'>' if above else '>='} {low:g}"
    else:
        words = f"a number in {'(' if above else '['}{low:g}, {high:g}]"
    return Kind(test, words)


def one_of(values: Collection[str]) -> Kind:
    return Kind(lambda value: isinstance(value, str) and value in values, f"one of {', '.join(map(repr, values))}")


IDENTIFIER = Kind(
    lambda value: isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.:+-]{1,64}", value) is not None,
    "a short identifier (letters, digits, _.:+-)",
)
TEXT = Kind(lambda value: isinstance(value, str), "a string")
NAME = Kind(lambda value: isinstance(value, str) and value != "", "a non-empty string")
COUNT = Kind(lambda value: _is_int(value) and value >= 0, "a whole number >= 0")
SHAPE = Kind(lambda value: isinstance(value, list) and all(COUNT.test(size) for size in value), "a list of sizes")
OBJECT = Kind(lambda value: isinstance(value, dict), "an object")
LIST = Kind(lambda value: isinstance(value, list), "a list")


def check_fields(
    data: Any, kinds: Mapping[str, Kind], where: str, required: Collection[str] = ()
) -> None:
    """`data` must be an object whose fields named in `kinds` (when present) have those kinds."""
    if not isinstance(data, dict):
        raise HtsrError(f"{where}: must be an object, got {_shown.repr(data)}")
    for key in required:
        if key not in data:
            raise HtsrError(f"{where}: '{key}' is missing")
    for key, kind in kinds.items():
        if key in data and not kind.test(data[key]):
            raise HtsrError(f"{where}: '{key}' must be {kind.expected}, got {_shown.repr(data[key])}")


def dumps_json(data: Any) -> str:
    """Indented JSON, NaN/Inf as null. `##[` (a workflow command to a CI runner, wherever it
    stands in a line) only occurs inside strings, where `#\\u0023[` reads back the same."""
    return json.dumps(_finite_or_null(data), indent=2).replace("##[", "#\\u0023[") + "\n"


def _finite_or_null(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so strict parsers accept the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value
