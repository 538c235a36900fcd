"""Sections of BENCHMARKS.md written by other benchmark scripts, kept when `make bench` regenerates the file.

A section sits between `<!-- NAME: start -->` and `<!-- NAME: end -->`.
"""

from __future__ import annotations

import re
from pathlib import Path

SECTIONS = ("bench-prune", "bench-bits", "bench-float32-noise", "bench-diagnose", "bench-training", "bench-sharpbalance", "bench-diagnose-digits", "bench-gate", "gpu-check", "speed-levers")


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"<!-- {re.escape(name)}: start -->.*?<!-- {re.escape(name)}: end -->\n?", re.DOTALL)


def with_section(markdown: str, name: str, body: str) -> str:
    """`markdown` with the section `name` set to `body` (replaced in place, or appended)."""
    block = f"<!-- {name}: start -->\n{body.rstrip()}\n<!-- {name}: end -->\n"
    if _pattern(name).search(markdown):
        return _pattern(name).sub(lambda _match: block, markdown, count=1)
    return markdown.rstrip("\n") + "\n\n" + block


def keep_sections(previous: Path, markdown: str) -> str:
    """`markdown` with the named sections of the file it replaces carried over."""
    if not previous.is_file():
        return markdown
    old = previous.read_text()
    for name in SECTIONS:
        match = _pattern(name).search(old)
        if match:
            markdown = markdown.rstrip("\n") + "\n\n" + match.group(0)
    return markdown
