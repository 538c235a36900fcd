"""`make gpu-check` (benchmarks/gpu_check.py): its comparisons, its bookkeeping, and its dry run on the CPU.

The GPU run itself needs a GPU machine; here every step that can runs on the CPU with tiny
inputs, and the pure parts are checked on made-up documents. Nothing here depends on timing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "benchmarks"))

import gpu_check  # noqa: E402


def report(alphas: dict[str, float | None], statuses: dict[str, str] | None = None, seconds: float = 1.0) -> dict:
    """An htsr.report/1 document with only what the comparisons read."""
    layers = [{"name": name, "status": (statuses or {}).get(name, "ok"), "alpha": alpha, "lambda_max": 2.0}
              for name, alpha in alphas.items()]
    return {"checkpoint": "m", "settings": {"device": "cpu"}, "layers": layers,
            "summary": {"mean_alpha": 3.0, "seconds": seconds}}


def test_alpha_agreement_takes_the_worst_layer_and_the_tolerance():
    reference = report({"a": 3.0, "b": 4.0, "c": None})
    close = gpu_check.alpha_agreement(reference, report({"a": 3.0004, "b": 3.9991, "c": None}))
    assert close["problems"] == [] and close["alphas_compared"] == 2 and close["worst_layer"] == "b"
    assert close["max_abs_alpha_diff"] == pytest.approx(9e-4)
    far = gpu_check.alpha_agreement(reference, report({"a": 3.0, "b": 4.002, "c": None}))
    assert far["problems"] == ["max |alpha difference| 0.002 > 0.001 (b)"]


def test_alpha_agreement_flags_statuses_missing_alphas_and_nan():
    reference = report({"a": 3.0, "b": 4.0})
    changed = gpu_check.alpha_agreement(reference, report({"a": None, "b": 4.0}, {"a": "failed"}))
    assert changed["problems"] == ["a: status failed instead of ok", "a: alpha None instead of 3.0"]
    nan = gpu_check.alpha_agreement(reference, report({"a": 3.0, "b": math.nan}))
    assert nan["worst_layer"] == "b" and nan["problems"]
    renamed = gpu_check.alpha_agreement(reference, report({"a": 3.0, "x": 4.0}))
    assert "the layers differ" in renamed["problems"]


def test_report_differences_ignore_seconds_and_see_the_last_bits():
    single = report({"a": 3.0, "b": 4.0}, seconds=1.0)
    assert gpu_check.report_differences(single, report({"a": 3.0, "b": 4.0}, seconds=9.0)) == {
        "layers": 2, "max_rel_diff": 0.0, "bitwise_equal": True, "rtol": 1e-12, "problems": []}
    last_bit = gpu_check.report_differences(single, report({"a": 3.0, "b": math.nextafter(4.0, 5.0)}))
    assert last_bit["problems"] == [] and not last_bit["bitwise_equal"] and 0 < last_bit["max_rel_diff"] < 1e-15
    moved = gpu_check.report_differences(single, report({"a": 3.0, "b": 4.0 + 1e-9}))
    assert moved["problems"] == ["b.alpha: 4.000000001 instead of 4.0"]
    status = gpu_check.report_differences(single, report({"a": 3.0, "b": 4.0}, {"b": "failed"}))
    assert status["problems"] == ["b.status: 'failed' instead of 'ok'"]


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.test_cuda" name="test_a"/>
<testcase classname="tests.test_cuda" name="test_b"><failure message="assert 1 == 2&#10;more">trace</failure></testcase>
<testcase classname="tests.test_farms" name="test_c"><skipped message="needs a CUDA device"/></testcase>
<testcase classname="tests.test_farms" name="test_d"><error message="fixture broke">trace</error></testcase>
</testsuite></testsuites>
"""


def test_junit_counts_and_the_tests_status(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    counts = gpu_check.junit_counts(path)
    assert {key: counts[key] for key in ("selected", "passed", "failed", "errors", "skipped")} == {
        "selected": 4, "passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    assert counts["failures"] == ["tests.test_cuda::test_b: assert 1 == 2", "tests.test_farms::test_d: fixture broke"]
    assert gpu_check.tests_result(counts, 1).status == "failed"
    all_skipped = {"selected": 3, "passed": 0, "failed": 0, "errors": 0, "skipped": 3, "skip_reasons": ["needs a CUDA device"]}
    skipped = gpu_check.tests_result(all_skipped, 0)
    assert (skipped.status, skipped.reason) == ("skipped", "all 3 CUDA tests skipped: needs a CUDA device")
    passed = {**all_skipped, "passed": 2, "skipped": 1}
    assert gpu_check.tests_result(passed, 0).status == "ok"
    assert gpu_check.tests_result({**passed, "selected": 0, "passed": 0, "skipped": 0}, 5).status == "failed"


def test_the_cuda_test_files_are_found_by_their_skip_reason():
    found = {path.relative_to(REPO / "tests").as_posix() for path in gpu_check.cuda_test_files(REPO / "tests")}
    assert {
        "spectra/test_cuda.py", "pruning/test_cuda.py", "engine/test_distributed.py", "spectra/test_farms.py",
        "checkpoints/test_quantized_decoders.py",
    } <= found
    assert "spectra/test_fit.py" not in found


def test_unknown_steps_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_arguments(["--steps", "profile,speed"])
    assert exit_info.value.code == 2 and "unknown step speed" in capsys.readouterr().err


def test_a_spent_budget_starts_nothing_and_says_so(tmp_path):
    """Less budget than one command needs: every step is recorded as skipped, with the reason."""
    code = gpu_check.main(["--device", "cpu", "--out", str(tmp_path), "--budget-s", "1", "--steps", "agreement",
                           "--models", "tiny-cnn"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["finished"]
    steps = summary["steps"]
    assert list(steps) == list(gpu_check.STEPS)
    assert steps["environment"]["status"] == steps["agreement"]["status"] == "skipped"
    assert steps["agreement"]["reason"].startswith("out of time: ")
    assert steps["inputs"]["reason"] == "no selected step needs generated inputs"
    assert steps["profile"]["reason"] == "not selected (--steps agreement)"


def test_without_a_gpu_the_cuda_check_fails_once_and_skips_the_rest(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = gpu_check.main(["--out", str(tmp_path), "--steps", "agreement,tests"])
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert code == 1
    assert steps["environment"]["status"] == "failed"
    assert steps["environment"]["reason"] == "--device cuda, but torch sees no CUDA device (a dry run: --device cpu)"
    assert steps["environment"]["numbers"]["cuda_available"] is False
    for name in ("inputs", "agreement", "tests"):
        assert steps[name]["status"] == "skipped"
        assert steps[name]["reason"].startswith("the environment step failed: --device cuda, but torch sees no CUDA")


@pytest.mark.slow
def test_the_cpu_dry_run_writes_every_step_and_the_alphas_agree(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--steps", "profile,agreement",
         "--models", "generated"],
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "htsr.gpu-check/1" and summary["dry_run"] and summary["finished"]
    steps = summary["steps"]
    assert list(steps) == list(gpu_check.STEPS)
    for name, step in steps.items():
        assert step["status"] in ("ok", "failed", "skipped"), name
        if step["status"] != "ok":
            assert step["reason"], name
    assert {name: step["status"] for name, step in steps.items()} == {
        "environment": "ok", "inputs": "ok", "profile": "ok", "agreement": "ok",
        "torchrun": "skipped", "prune": "skipped", "tests": "skipped"}
    assert steps["tests"]["reason"] == "not selected (--steps profile,agreement)"
    models = steps["agreement"]["numbers"]["models"]
    assert list(models) == ["generated"]
    agreement = models["generated"]
    # htsr's default precision against the float64 path, both on the CPU here
    assert agreement["status"] == "ok" and agreement["alphas_compared"] == 14
    assert agreement["max_abs_alpha_diff"] < 1e-3
    assert agreement["candidate_settings"]["precision"] == "mixed"
    generated = steps["inputs"]["numbers"]["checkpoint"]
    assert (generated["hidden"], generated["intermediate"], generated["matrices"]) == (64, 172, 14)
    profile = steps["profile"]["numbers"]
    assert {"read", "transfer", "solve", "fit", "wall"} <= set(profile["stages"])
    assert profile["peak_host_rss_mb"] > 0 and profile["floor"]["peak_host_rss_mb"] > 0
    assert profile["gpu_max_allocated_mb"] is None  # no GPU in the dry run
    split = profile["stage_split"]
    assert sorted(entry["shape"] for entry in split["shapes"]) == [[64, 64], [64, 172], [172, 64]]
    assert sum(entry["matrices"] for entry in split["shapes"]) == 14
    log = (out / "gpu_check.log").read_text()
    assert "htsr_cli analyze" in log and "== agreement: ok" in log
