"""Issue 26 class 1: no output of a command may land on anything the command reads.

Generated: a command, one of its outputs, one of the files it reads (the
checkpoint, a sidecar beside it, a report, its spectra, a baseline, the gate's
pyproject.toml) and a way to name it (the path, a symlink, a hard link, a path
through `..`). Every case is exit 2 with one line, within seconds, and leaves
every input byte for byte as it was and nothing new behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st
from safetensors.torch import save_file

from tests.conftest import FIXTURES, small_state_dict
from tests.hostile.harness import assert_refused, batches, run_cases, snapshot

SIDECARS = ("config.json", "quantize_config.json", "quant_config.json")
REFUSALS = ("is an input of this command", "contains the input", "lies inside the input directory")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A weight file with every sidecar beside it, a report with its spectra, a baseline, a plan and a pyproject.toml."""
    root = tmp_path_factory.mktemp("inputs")
    model = root / "model"
    model.mkdir()
    save_file({key: value.contiguous() for key, value in small_state_dict().items()}, str(model / "m.safetensors"))
    (model / "config.json").write_text(json.dumps({"note": "not an architecture htsr can build"}))
    (model / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128}))
    (model / "quant_config.json").write_text(json.dumps({"w_bit": 4, "q_group_size": 128}))
    shutil.copy(FIXTURES / "tiny-cnn-trained.pth", root / "cnn.pth")
    outcomes = run_cases([
        {"args": ["analyze", root / "cnn.pth", "-f", "json", "-o", root / "run.json",
                  "--save-spectra", root / "run.spectra.safetensors", "-q"]},
        {"args": ["allocate", "sparsity", root / "cnn.pth", "--target", "0.5", "--granularity", "matrix", "-f", "json", "-o", root / "plan.json", "-q"]},
    ])
    assert [outcome.code for outcome in outcomes] == [0, 0], outcomes
    shutil.copy(root / "run.json", root / "base.json")
    (root / "pyproject.toml").write_text("[tool.htsr.gate]\nalpha_max = 9.0\n")
    return root


def commands(root: Path) -> dict[str, tuple[list, list[str], list[Path]]]:
    """name -> (arguments, its output flags, what it reads)."""
    weights = root / "model" / "m.safetensors"
    with_sidecars = [weights, *(root / "model" / name for name in SIDECARS)]
    report, spectra, base, pyproject = root / "run.json", root / "run.spectra.safetensors", root / "base.json", root / "pyproject.toml"
    return {
        "analyze": (["analyze", weights, "-q"], ["-o", "--save-spectra"], with_sidecars),
        "report a report": (["report", report, "-q"], ["-o"], [report, spectra]),
        "report a checkpoint": (["report", weights, "-q"], ["-o"], with_sidecars),
        "compare": (["compare", report, weights, "-q"], ["-o"], [report, *with_sidecars]),
        "allocate sparsity": (["allocate", "sparsity", weights, "--target", "0.5", "--granularity", "matrix", "-q"], ["-o"], with_sidecars),
        "gate with a baseline": (
            ["gate", report, "--baseline", base, "--max-alpha-drift", "5", "-f", "json", "-q"], ["-o", "--junit"],
            [report, base, pyproject],
        ),
        "gate a checkpoint": (["gate", weights, "-q"], ["-o", "--junit"], [*with_sidecars, pyproject]),
        "lr-schedule export": (["lr-schedule", "export", report, "--base-lr", "0.1", "-q"], ["-o"], [report]),
    }


def alias(root: Path, target: Path, how: str, index: int) -> Path:
    """`target` named another way: as it is, through a symlink, a hard link, or a path through `..`."""
    if how == "path":
        return target
    if how == "dotdot":
        return target.parent / ".." / target.parent.name / target.name
    made = root / "aliases" / f"{index}-{how}{target.suffix}"
    made.parent.mkdir(exist_ok=True)
    if not os.path.lexists(made):
        (made.symlink_to if how == "symlink" else made.hardlink_to)(target)
    return made


case = st.tuples(
    st.sampled_from(sorted(commands(Path("/")))), st.integers(0, 1), st.integers(0, 9),
    st.sampled_from(["path", "symlink", "hardlink", "dotdot"]),
)


@batches(3)
@given(st.lists(case, min_size=6, max_size=6))
def test_no_output_lands_on_an_input(inputs, batch):
    table = commands(inputs)
    cases = []
    for index, (name, flag_index, read_index, how) in enumerate(batch):
        args, flags, read = table[name]
        flag, target = flags[flag_index % len(flags)], read[read_index % len(read)]
        cases.append({"args": [*args, flag, alias(inputs, target, how, index)], "env": {}})
    before = snapshot(inputs)
    for outcome in run_cases(cases, cwd=inputs):
        line = assert_refused(outcome)
        assert any(words in line for words in REFUSALS), line
    assert snapshot(inputs) == before


def test_a_directory_output_containing_an_input_is_refused(inputs):
    """--plots and prune -o are directories: one holding a file the command reads is refused."""
    weights = inputs / "model" / "m.safetensors"
    before = snapshot(inputs)
    outcomes = run_cases([
        {"args": ["analyze", weights, "--plots", inputs / "model", "-q"]},
        {"args": ["analyze", inputs / "cnn.pth", "--plots", inputs, "-q"]},
        {"args": ["prune", inputs / "cnn.pth", "--allocation", inputs / "plan.json", "-o", inputs, "--overwrite", "-q"]},
    ])
    for outcome in outcomes:
        assert_refused(outcome, "contains the input")
    assert snapshot(inputs) == before


def test_two_outputs_of_one_command_may_not_be_one_file(inputs, tmp_path):
    report = inputs / "run.json"
    (tmp_path / "link.xml").symlink_to(tmp_path / "out.xml")
    outcomes = run_cases([
        {"args": ["gate", report, "-o", tmp_path / "out.xml", "--junit", tmp_path / "out.xml", "-q"]},
        {"args": ["gate", report, "-o", tmp_path / "out.xml", "--junit", tmp_path / "link.xml", "-q"]},
        {"args": ["analyze", inputs / "cnn.pth", "-o", tmp_path / "x", "--save-spectra", tmp_path / ".." / tmp_path.name / "x", "-q"]},
    ], cwd=inputs)
    for outcome in outcomes:
        assert_refused(outcome, "name the same file")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link.xml"]


def test_prune_never_deletes_the_plan_it_reads(inputs, tmp_path):
    """`prune --allocation OUT/plan.json -o OUT --overwrite`: OUT contains an input."""
    out = tmp_path / "out"
    assert [o.code for o in run_cases([{"args": ["prune", inputs / "cnn.pth", "--target", "0.3", "--allocation", "uniform", "-o", out, "-q"]}])] == [0]
    shutil.copy(inputs / "plan.json", out / "plan.json")
    before = snapshot(out)
    [outcome] = run_cases([{"args": ["prune", inputs / "cnn.pth", "--allocation", out / "plan.json", "-o", out, "--overwrite", "-q"]}])
    assert_refused(outcome, "contains the input")
    assert snapshot(out) == before


# --- --overwrite replaces only what an earlier htsr prune wrote, file for file ---------------------------------


def earlier_output(tmp_path: Path, inputs: Path) -> Path:
    out = tmp_path / "out"
    [outcome] = run_cases([{"args": ["prune", inputs / "cnn.pth", "--target", "0.3", "--allocation", "uniform", "-o", out, "-q"]}])
    assert outcome.code == 0, outcome.stderr
    return out


def _foreign_file(out: Path, outside: Path) -> None:
    (out / "notes.txt").write_text("mine")


def _record_as_a_link(out: Path, outside: Path) -> None:
    record = out / "htsr-prune.json"
    shutil.move(record, outside / "record.json")
    record.symlink_to(outside / "record.json")


def _record_of_another_tool(out: Path, outside: Path) -> None:
    (out / "htsr-prune.json").write_text(json.dumps({"schema": "htsr.prune/1", "files": {"weights": ["cnn.pth"]}}))


def _weights_replaced_by_a_link(out: Path, outside: Path) -> None:
    (outside / "secret").write_bytes((out / "cnn.pth").read_bytes())
    (out / "cnn.pth").unlink()
    (out / "cnn.pth").symlink_to(outside / "secret")


def _weights_changed(out: Path, outside: Path) -> None:
    with open(out / "cnn.pth", "ab") as handle:
        handle.write(b"appended by someone else")


def _only_a_record(out: Path, outside: Path) -> None:
    for path in out.iterdir():
        if path.name != "htsr-prune.json":
            path.unlink()
    (out / "data.bin").write_bytes(b"x")


@pytest.mark.parametrize(
    "damage", [_foreign_file, _record_as_a_link, _record_of_another_tool, _weights_replaced_by_a_link, _weights_changed, _only_a_record]
)
def test_overwrite_refuses_what_htsr_did_not_write(damage, inputs, tmp_path):
    out = earlier_output(tmp_path, inputs)
    outside = tmp_path / "outside"
    outside.mkdir()
    damage(out, outside)
    before = snapshot(out, outside)
    [outcome] = run_cases([{"args": ["prune", inputs / "cnn.pth", "--target", "0.5", "--allocation", "uniform", "-o", out, "--overwrite", "-q"]}])
    assert_refused(outcome, "--overwrite replaces only an earlier htsr prune output")
    assert snapshot(out, outside) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "outside"]


def test_overwrite_replaces_exactly_the_files_of_an_earlier_output(inputs, tmp_path):
    out = earlier_output(tmp_path, inputs)
    record = json.loads((out / "htsr-prune.json").read_text())
    assert [entry["path"] for entry in record["files"]["written"]] == ["cnn.pth"]
    [outcome] = run_cases([{"args": ["prune", inputs / "cnn.pth", "--target", "0.5", "--allocation", "uniform", "-o", out, "--overwrite", "-q"]}])
    assert outcome.code == 0, outcome.stderr
    assert json.loads((out / "htsr-prune.json").read_text())["settings"]["target"] == 0.5
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
