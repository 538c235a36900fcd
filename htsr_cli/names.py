"""How htsr names things: module paths and blocks (algorithms.md section 8). Pure string rules."""

from __future__ import annotations

import re

_NUMERIC = re.compile(r"^\d+$")


def module_name(key: str) -> str:
    return key[: -len(".weight")] if key.endswith(".weight") else key


def block_of(name: str) -> str | None:
    """Everything up to and including the first purely numeric path component."""
    parts = name.split(".")
    for index, part in enumerate(parts):
        if _NUMERIC.match(part):
            return ".".join(parts[: index + 1])
    return None
