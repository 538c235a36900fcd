"""Property tests of the contract under random input (issue 14).

For random safetensors files, random report documents and random option
values: exit 0 with a valid result, or exit 2 with exactly one `htsr: error:`
line; never a traceback, and nothing written except the `-o` file.
Examples are derandomized and few (see the profile in conftest.py).
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from pathlib import Path

from hypothesis import event, given, strategies as st
from typer.testing import CliRunner

from tests.conftest import FIXTURES
from htsr_cli.cli.app import app
from htsr_cli.results.report import Report

CNN = FIXTURES / "tiny-cnn-trained.pth"
DTYPES = ["F64", "F32", "F16", "BF16", "I8", "U8", "I64", "BOOL", "F8_E4M3", "C64", "XX"]


def invoke(*args, cwd: Path) -> tuple[int, str, str]:
    """Run htsr in-process in `cwd`; a traceback (any exception but an exit) fails the property."""
    before = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(arg) for arg in args])
    finally:
        os.chdir(before)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback for {args}: {result.exception!r}"
    )
    return result.exit_code, result.stdout, result.stderr


def assert_one_error_line(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("htsr: error: "), stderr


def files_in(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*")}


# --- random safetensors files ------------------------------------------------------------------------------

sizes = st.one_of(st.integers(0, 40), st.integers(-3, -1), st.sampled_from([2**31, 2**62, 100_000]))
entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(DTYPES),
        "shape": st.lists(sizes, min_size=0, max_size=4),
        "data_offsets": st.lists(st.integers(-4, 6000), min_size=2, max_size=3),
    }
)
names = st.sampled_from(["a.weight", "b.weight", "blocks.0.fc.weight", "x.bias", "w\x1b[31m.weight", "=c.weight"])


BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "C64": 64}


@st.composite
def safetensors_files(draw) -> bytes:
    """Half of them consistent (valid files with random bytes: NaN, Inf, zeros), half arbitrary."""
    header = draw(st.dictionaries(names, entries, max_size=4))
    raw_data = draw(st.binary(min_size=1, max_size=64))
    if draw(st.booleans()):
        offset = 0
        for entry in header.values():
            entry["dtype"] = draw(st.sampled_from(["F32", "F16", "BF16", "F64", "I8", "C64"]))
            entry["shape"] = draw(st.lists(st.integers(1, 40), min_size=2, max_size=3))
            nbytes = math.prod(entry["shape"]) * BITS.get(entry["dtype"], 8) // 8
            entry["data_offsets"] = [offset, offset + nbytes]
            offset += nbytes
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + (raw_data * (offset // len(raw_data) + 1))[:offset]
    raw = json.dumps(header).encode()
    data_length = draw(st.integers(0, 6000))
    length = draw(st.sampled_from([len(raw), len(raw) + 1, 2**40]))
    return struct.pack("<Q", length) + raw + (raw_data * (data_length // len(raw_data) + 1))[:data_length]


@given(safetensors_files())
def test_random_safetensors_files_give_a_report_or_one_error_line(content):
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "m.safetensors").write_bytes(content)
        code, stdout, stderr = invoke("analyze", "m.safetensors", "-f", "json", "-o", "out.json", "--quiet", cwd=root)
        event(f"exit {code}")
        if code == 0:
            report = Report.from_json(json.loads((root / "out.json").read_text()))
            assert all(layer.status in ("ok", "skipped", "failed", "fit-failed") for layer in report.layers)
            assert files_in(root) == {"m.safetensors", "out.json"}
        else:
            assert code == 2, (code, stderr)
            assert_one_error_line(stderr)
            assert files_in(root) == {"m.safetensors"}


# --- random report documents -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


def valid_document() -> dict:
    from htsr_cli.engine.pipeline import analyze

    if not hasattr(valid_document, "cached"):
        valid_document.cached = json.loads(analyze(CNN, device="cpu").dumps())
    return json.loads(json.dumps(valid_document.cached))


def plausible(value):
    """A value of the same JSON type as `value`: mutations that often still make a valid report."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(0, 10_000)
    if isinstance(value, float):
        return st.floats(1.001, 50.0)
    if isinstance(value, str):
        return st.sampled_from(["ok", "ks", "cpu", "float64", "linear", "skipped", "x\x1b[2J", "=1+1", value])
    return st.just(value)


@st.composite
def report_documents(draw) -> str:
    document = valid_document()
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "settings", "summary", "layer"]))
        target = {"top": document, "settings": document.get("settings"), "summary": document.get("summary")}.get(where)
        if where == "layer":
            layers = document.get("layers")
            target = layers[draw(st.integers(0, len(layers) - 1))] if isinstance(layers, list) and layers else None
        if isinstance(target, dict) and target:
            key = draw(st.sampled_from(sorted(target)))
            target[key] = draw(st.one_of(plausible(target[key]), json_values))
    return json.dumps(document, allow_nan=True)


@given(report_documents())
def test_random_reports_give_a_verdict_or_one_error_line(text):
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "r.json").write_text(text)
        code, stdout, stderr = invoke("gate", "r.json", "--junit", "j.xml", cwd=root)
        event(f"exit {code}")
        if code in (0, 1):
            assert ("PASS" if code == 0 else "FAIL") in stdout.splitlines()[-1]
            assert files_in(root) == {"r.json", "j.xml"}
        else:
            assert code == 2, (code, stderr)
            assert_one_error_line(stderr)
            assert files_in(root) == {"r.json"}
        code, stdout, stderr = invoke("compare", "r.json", "r.json", "-f", "csv", cwd=root)
        assert code in (0, 2) and (code == 0 or len(stderr.strip().splitlines()) == 1), stderr


# --- random option values ----------------------------------------------------------------------------------

# Mostly sensible values, so that runs often succeed, mixed with the hostile ones.
numbers = st.one_of(
    st.floats(0.05, 0.9),
    st.floats(0.05, 3.0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1e-320, 1e-7, 1e6, 1e300]),
).map(repr)
counts = st.one_of(st.integers(2, 30), st.integers(2, 30), st.integers(-5, 50), st.sampled_from([10**30, 2**63])).map(str)


@given(
    conv_scale=numbers, min_evals=counts, farms=st.booleans(), farms_q=numbers, farms_window=counts,
    farms_steps=counts, xmin=st.sampled_from(["ks", "median", "peak", "bogus"]),
    layers=st.sampled_from([None, "conv", "fc[", "(a", "^fc3$", "nothing"]),
)
def test_random_analysis_options_give_a_report_or_one_error_line(
    conv_scale, min_evals, farms, farms_q, farms_window, farms_steps, xmin, layers
):
    args = ["analyze", CNN, "-f", "json", "-o", "out.json", "--quiet", "--conv-scale", conv_scale,
            "--min-evals", min_evals, "--xmin", xmin, "--device", "cpu"]
    if farms:
        args += ["--farms", "--farms-q", farms_q, "--farms-window", farms_window, "--farms-steps", farms_steps]
    if layers is not None:
        args += ["--layers", layers]
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        code, stdout, stderr = invoke(*args, cwd=root)
        event(f"exit {code}")
        if code == 0:
            report = Report.from_json(json.loads((root / "out.json").read_text()))
            assert report.settings["conv_scale"] == float(conv_scale)
            assert files_in(root) == {"out.json"}
        else:
            assert code == 2, (code, stderr)
            assert_one_error_line(stderr)
            assert files_in(root) == set()


@given(
    base_lr=numbers, min_ratio=numbers, max_ratio=numbers, epochs=st.one_of(st.none(), counts),
    beta=numbers, total=st.one_of(st.none(), counts), target=numbers, epsilon=numbers,
)
def test_random_allocation_options_give_a_plan_or_one_error_line(base_lr, min_ratio, max_ratio, epochs, beta, total, target, epsilon):
    saved = {}
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        runs = [
            ["lr-schedule", "export", CNN, "--base-lr", base_lr, "--min-ratio", min_ratio, "--max-ratio", max_ratio]
            + (["--epochs", epochs] if epochs is not None else []),
            ["allocate", "experts", FIXTURES / "tiny-llama", "--beta", beta] + (["--total", total] if total is not None else []),
            ["allocate", "sparsity", CNN, "--granularity", "matrix", "--target", target, "--epsilon", epsilon],
        ]
        for args in runs:
            output = root / "plan.json"
            code, stdout, stderr = invoke(*args, "-f", "json", "-o", output, "--quiet", cwd=root)
            event(f"{args[1]} exit {code}")
            if code == 0:
                saved[args[1]] = json.loads(output.read_text())
                assert saved[args[1]]["schema"].startswith("htsr.")
                output.unlink()
            else:
                assert code == 2, (args, code, stderr)
                assert_one_error_line(stderr)
            assert files_in(root) == set()
    if "experts" in saved:  # the largest-remainder rounding sums exactly, whatever --total
        plan = saved["experts"]
        assert sum(entry["experts"] for entry in plan["layers"] if entry["experts"]) == plan["settings"]["total"]

