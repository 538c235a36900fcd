"""Issue 26 class 4: names from a checkpoint or a report never act on what reads htsr's output.

Generated: layer names built from what spreadsheets, terminals and CI runners
act on (formula triggers, ANSI/OSC escapes and other control characters, `::`
workflow commands after blanks, the older `##[` commands, bidi overrides, lone
surrogates) mixed with ordinary text. They go into a safetensors checkpoint,
through every command and format, and every output is checked: no CSV cell a
spreadsheet would run, no line a CI runner would run, no control character on
stdout or stderr, JSON and YAML still parse, the HTML page and plots are drawn.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import unicodedata
from pathlib import Path

import numpy as np
import yaml
from hypothesis import given, strategies as st

from tests.hostile.harness import batches, run_cases

HOSTILE_PIECES = [
    "=", "+", "-", "@", "\t", "\r", "=HYPERLINK(\"http://x\")", "+1+1", "-2", "@SUM(A1)",
    "::set-output name=verdict::pass", "  ::error::forged", "::add-mask::x", "##[set-output name=x;]y", "##[error]",
    "\x1b[31m", "\x1b]0;title\x07", "\x07", "\x00", "\x7f", "\u202e", "\u2028", "\ud800", "\udcff", "\n::warning::x",
]
piece = st.sampled_from(HOSTILE_PIECES) | st.text(st.characters(codec="utf-8", exclude_characters="."), max_size=6)
name = st.lists(piece, min_size=1, max_size=4).map("".join).filter(lambda text: text.strip() != "")
OUR_COMMANDS = ("::error title=htsr gate", "::warning title=htsr gate")


def write_checkpoint(path: Path, names: list[str]) -> Path:
    """A safetensors file with one 64 x 48 matrix per name (as `<name>.weight`)."""
    rng = np.random.default_rng(0)
    header, data = {}, b""
    for index, layer in enumerate(names):
        matrix = (rng.standard_normal((64, 48)) * (1 + index)).astype("<f4").tobytes()
        header[f"{layer}.weight"] = {"dtype": "F32", "shape": [64, 48], "data_offsets": [len(data), len(data) + len(matrix)]}
        data += matrix
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def assert_no_ci_command(text: str, ours: tuple[str, ...] = ()) -> None:
    assert "##[" not in text, text
    for line in text.split("\n"):
        assert not line.lstrip().startswith("::") or line.startswith(ours), line


def assert_no_control_characters(text: str) -> None:
    bad = [char for char in text if char not in "\n" and unicodedata.category(char) in ("Cc", "Cs")]
    assert not bad, (bad, text[:500])


def assert_csv_is_inert(text: str) -> None:
    for row in csv.reader(io.StringIO(text)):
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")) or _is_number(cell), cell


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


@batches(3)
@given(st.lists(name, min_size=3, max_size=6, unique_by=lambda text: text.encode("utf-8", "surrogatepass")))
def test_hostile_names_reach_no_output_as_commands(tmp_path_factory, names):
    place = tmp_path_factory.mktemp("names")
    model = write_checkpoint(place / "m.safetensors", names)
    report, html, plots = place / "r.json", place / "r.html", place / "plots"
    cases = [
        ["analyze", model, "-f", "json", "-o", report, "--save-spectra", place / "r.spectra.safetensors", "-q"],
        ["analyze", model, "-f", "csv"],
        ["analyze", model, "-f", "table"],
        ["analyze", model, "-f", "markdown"],
        ["analyze", model, "--plots", plots, "-o", place / "table.txt", "-q"],
        ["report", report, "-o", html, "-q"],
        ["compare", report, model, "-f", "csv"],
        ["compare", report, model],
        ["allocate", "sparsity", report, "--target", "0.5", "--granularity", "matrix", "-f", "csv"],
        ["lr-schedule", "export", report, "--base-lr", "0.1", "-f", "csv"],
        ["lr-schedule", "export", report, "--base-lr", "0.1", "-f", "yaml"],
        ["gate", report, "-f", "github", "--alpha-max", "2.5"],
        ["gate", report, "--alpha-max", "2.5", "--junit", place / "junit.xml"],
    ]
    outcomes = run_cases([{"args": args} for args in cases])
    for outcome in outcomes:
        fmt = outcome.args[outcome.args.index("-f") + 1] if "-f" in outcome.args else "table"
        assert outcome.code in (0, 1), (outcome.args, outcome.code, outcome.stderr[-2000:])  # gate: 1 = rule violated
        assert "Traceback" not in outcome.stderr
        assert_no_control_characters(outcome.stdout + outcome.stderr)
        assert_no_ci_command(outcome.stdout + outcome.stderr, OUR_COMMANDS if fmt == "github" else ())
        if fmt == "csv":
            assert_csv_is_inert(outcome.stdout)
        if fmt == "yaml":
            assert yaml.safe_load(outcome.stdout.split("\n", 2)[-1] if outcome.stdout.startswith("note") else outcome.stdout)
    document = json.loads(report.read_text())  # still JSON, names as U+FFFD where they had lone surrogates
    assert len(document["layers"]) == len(names)
    for path in (place / "table.txt", place / "junit.xml", html):
        assert_no_ci_command(path.read_text(encoding="utf-8"))
    assert html.stat().st_size > 0 and (plots / "overview.png").is_file()
