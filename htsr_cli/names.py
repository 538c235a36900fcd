"""How htsr names things: module paths and blocks (algorithms.md section 8). Pure string rules."""

from __future__ import annotations

import re

_NUMERIC = re.compile(r"^\d+$")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def readable(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD.

    A name can hold one: a `\\ud800` escape in a JSON header or report, or an
    undecodable byte of a file name (os.fsdecode). No encoder, font or file
    name accepts it, so everything drawn or shown uses this form.
    """
    return _LONE_SURROGATE.sub(REPLACEMENT, text)


def module_name(key: str) -> str:
    return key[: -len(".weight")] if key.endswith(".weight") else key


def block_of(name: str) -> str | None:
    """Everything up to and including the first purely numeric path component."""
    parts = name.split(".")
    for index, part in enumerate(parts):
        if _NUMERIC.match(part):
            return ".".join(parts[: index + 1])
    return None
