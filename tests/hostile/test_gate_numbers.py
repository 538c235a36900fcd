"""Issue 26 class 5: the gate never passes a broken layer, and numbers too large to be numbers are bad input.

Generated: reports where some layers failed (non-finite weights) or their fit
failed; reports whose layers say failed or skipped but carry an alpha; reports
and gate configs holding integers of hundreds of digits or floats beyond
float64. A failed layer is a finding that fails the gate by default (a warning
with --allow-failed); everything else is exit 2 with one line.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st

from tests.conftest import FIXTURES, small_state_dict
from tests.hostile.harness import assert_refused, batches, run_cases


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gate")
    shutil.copy(FIXTURES / "tiny-cnn-trained.pth", root / "cnn.pth")
    [outcome] = run_cases([{"args": ["analyze", root / "cnn.pth", "-f", "json", "-o", root / "run.json", "-q"]}])
    assert outcome.code == 0, outcome.stderr
    document = json.loads((root / "run.json").read_text())
    assert sum(layer["status"] == "ok" for layer in document["layers"]) >= 4
    return document


def broken(layer: dict, status: str) -> None:
    """`layer` as htsr writes a layer whose analysis (failed) or fit (fit-failed) did not succeed."""
    layer.update(status=status, reason="weights are not finite (NaN)" if status == "failed" else "no power-law tail")
    for key in ("alpha", "alpha_weighted", "log_alpha_norm", "xmin", "ks_distance", "sigma", "tail_size"):
        layer[key] = None
    layer["quality"] = "unknown" if status == "fit-failed" else None


def write(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


@batches(3)
@given(st.lists(st.tuples(st.lists(st.integers(0, 40), min_size=1, max_size=3), st.sampled_from(["failed", "fit-failed"])),
                min_size=4, max_size=4))
def test_failed_layers_fail_the_gate_unless_allowed(report, tmp_path_factory, batch):
    cases, expected = [], []
    for indices, status in batch:
        document = copy.deepcopy(report)
        ok = [layer for layer in document["layers"] if layer["status"] == "ok"]
        chosen = {index % len(ok) for index in indices}
        for index in chosen:
            broken(ok[index], status)
        path = write(tmp_path_factory.mktemp("failed") / "r.json", document)
        # generous rules that every healthy layer passes: only the failed layers can fail the gate
        rules = ["--alpha-min", "1", "--alpha-max", "100", "-f", "json"]
        cases += [{"args": ["gate", path, *rules]}, {"args": ["gate", path, *rules, "--allow-failed"]}]
        expected.append(len(chosen))
    outcomes = run_cases(cases)
    for count, (strict, allowed) in zip(expected, zip(outcomes[::2], outcomes[1::2])):
        assert strict.code == 1, strict.stderr
        verdict = json.loads(strict.stdout)
        findings = [v for v in verdict["violations"] if v["rule"] == "failed_layers"]
        assert len(findings) == count and all(v["severity"] == "error" for v in findings), verdict
        assert allowed.code == 0, allowed.stdout


def test_a_nan_layer_among_healthy_ones_fails_the_default_gate(tmp_path):
    weights = small_state_dict()
    weights["blocks.1.fc2.weight"][3, 4] = float("nan")
    torch.save(weights, tmp_path / "m.pth")
    [outcome] = run_cases([{"args": ["gate", tmp_path / "m.pth", "-q"]}])
    assert outcome.code == 1, outcome.stdout + outcome.stderr
    assert "failed_layers" in outcome.stdout and "blocks.1.fc2" in outcome.stdout


@batches(3)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["failed", "skipped", "fit-failed"]),
                          st.floats(1.01, 50)), min_size=4, max_size=4))
def test_layers_whose_status_contradicts_their_numbers_are_refused(report, tmp_path_factory, batch):
    cases = []
    for index, status, alpha in batch:
        document = copy.deepcopy(report)
        layer = document["layers"][index % len(document["layers"])]
        layer.update(status=status, alpha=alpha)
        path = write(tmp_path_factory.mktemp("inconsistent") / "r.json", document)
        cases += [{"args": ["gate", path]}, {"args": ["compare", path, path]}]
    for outcome in run_cases(cases):
        assert_refused(outcome, "but it carries alpha", "inconsistent")


@batches(3)
@given(st.lists(st.one_of(
    st.tuples(st.just("params"), st.integers(20, 400)),
    st.tuples(st.just("num_evals"), st.integers(20, 400)),
    st.tuples(st.just("alpha"), st.integers(309, 400)),
    st.tuples(st.just("toml alpha_max"), st.integers(309, 400)),
    st.tuples(st.just("toml max_flagged"), st.integers(20, 400)),
    st.tuples(st.just("toml mean_alpha_max float"), st.integers(309, 400)),
), min_size=6, max_size=6))
def test_numbers_too_large_to_be_numbers_are_bad_input(report, tmp_path_factory, batch):
    cases = []
    for field, digits in batch:
        place = tmp_path_factory.mktemp("huge")
        document = copy.deepcopy(report)
        if field.startswith("toml"):
            key = field.split()[1]
            value = f"1e{digits}" if field.endswith("float") else "9" * digits
            (place / "gate.toml").write_text(f"[tool.htsr.gate]\n{key} = {value}\n")
            cases.append({"args": ["gate", write(place / "r.json", document), "--config", place / "gate.toml"]})
            continue
        text = json.dumps(document)
        marker = f'"{field}": '
        start = text.index(marker) + len(marker)
        end = start + len(text[start:].split(",", 1)[0])
        huge = "9" * digits if field != "alpha" else f"1e{digits}"
        (place / "r.json").write_text(text[:start] + huge + text[end:])
        cases.append({"args": ["gate", place / "r.json"]})
    for outcome in run_cases(cases):
        assert_refused(outcome)
