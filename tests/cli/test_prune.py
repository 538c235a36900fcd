"""`htsr prune` on the command line: real runs, and every bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, tiny_text

TINY_LLAMA = FIXTURES / "tiny-llama"


def assert_usage_error(result, message: str, parent: Path) -> None:
    """One line on stderr, exit 2, no traceback, and nothing left in `parent` but what was there before."""
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.stdout)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("htsr: error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not [path for path in parent.iterdir() if "htsr-tmp" in path.name or path.name == "out"]


def test_prune_command_writes_the_checkpoint_and_prints_the_summary(tmp_path, cli):
    result = cli("prune", TINY_LLAMA, "--target", "0.7", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    record = json.loads((tmp_path / "out" / "htsr-prune.json").read_text())
    assert record["schema"] == "htsr.prune/1" and abs(record["summary"]["achieved"] - 0.7) < 1e-4
    assert "magnitude pruning, alphapruning allocation" in result.stdout
    assert "model.layers.0.self_attn.q_proj" in result.stdout and "embedding, not pruned" in result.stdout


def test_prune_and_perplexity_of_a_wanda_pruned_model(tmp_path, cli, tiny_lms, calibration_text):
    out = tmp_path / "out"
    result = cli(
        "prune", tiny_lms["gpt2"], "--target", "0.6", "--allocation", "owl", "--method", "wanda",
        "--calibration", calibration_text, "--samples", "4", "--seq-len", "32", "-o", out,
    )
    assert result.exit_code == 0, result.stderr
    assert "wanda pruning, owl allocation" in result.stdout
    scored = cli("eval", "perplexity", out, "--text", calibration_text, "--seq-len", "32", "--max-tokens", "200", "-f", "json")
    assert scored.exit_code == 0, scored.stderr
    value = json.loads(scored.stdout)
    assert value["objective"] == "causal" and value["windows"] == 6 and value["tokens_scored"] == 6 * 31
    assert value["perplexity"] == pytest.approx(math.exp(value["mean_nll"]))


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written


@pytest.mark.parametrize("target", ["1.5", "0", "1", "-0.2"])
def test_target_outside_zero_one(tmp_path, cli, target):
    result = cli("prune", TINY_LLAMA, "--target", target, "-o", tmp_path / "out")
    message = f"--target {float(target)}: must be a sparsity strictly between 0 and 1"
    assert_usage_error(result, message, tmp_path)
    allocated = cli("allocate", "sparsity", TINY_LLAMA, "--target", target)  # worded the same where it is planned
    assert allocated.exit_code == 2 and allocated.stderr == result.stderr


def test_missing_target(tmp_path, cli):
    assert_usage_error(cli("prune", TINY_LLAMA, "-o", tmp_path / "out"), "--target is required", tmp_path)


def test_wanda_without_calibration(tmp_path, cli, tiny_lms):
    result = cli("prune", tiny_lms["llama"], "--target", "0.5", "--method", "wanda", "-o", tmp_path / "out")
    assert_usage_error(result, "--calibration is required with the wanda method", tmp_path)


def test_calibration_missing_empty_or_too_short(tmp_path, cli, tiny_lms):
    base = ("prune", tiny_lms["llama"], "--target", "0.5", "--method", "wanda", "-o", tmp_path / "out")
    result = cli(*base, "--calibration", tmp_path / "nope.txt")
    assert_usage_error(result, f"--calibration {tmp_path / 'nope.txt'}: no such file", tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    assert_usage_error(cli(*base, "--calibration", empty), "the file is empty", tmp_path)
    short = tmp_path / "short.txt"
    short.write_text(tiny_text(100))
    result = cli(*base, "--calibration", short, "--samples", "8", "--seq-len", "64")
    assert_usage_error(result, "too short for --samples 8 x --seq-len 64 = 512 tokens", tmp_path)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    assert_usage_error(cli(*base, "--calibration", binary), "not UTF-8 text", tmp_path)


def test_calibration_window_longer_than_the_model(tmp_path, cli, tiny_lms, calibration_text):
    result = cli(
        "prune", tiny_lms["llama"], "--target", "0.5", "--method", "wanda", "--calibration", calibration_text,
        "--seq-len", "4096", "--samples", "1", "-o", tmp_path / "out",
    )
    assert_usage_error(result, "--seq-len 4096 is longer than", tmp_path)


def test_wanda_needs_a_model_transformers_can_instantiate(tmp_path, cli, calibration_text):
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    for path in TINY_LLAMA.iterdir():
        (unknown / path.name).write_bytes(path.read_bytes())
    config = json.loads((unknown / "config.json").read_text())
    config["model_type"] = "no-such-architecture"
    (unknown / "config.json").write_text(json.dumps(config))
    base = ("--target", "0.5", "--method", "wanda", "--calibration", calibration_text, "-o", tmp_path / "out")
    result = cli("prune", unknown, *base)
    assert_usage_error(result, "needs a config.json that transformers can instantiate", tmp_path)
    single = tmp_path / "weights.safetensors"
    single.write_bytes((TINY_LLAMA / "model-00001-of-00004.safetensors").read_bytes())
    assert_usage_error(cli("prune", single, *base), "needs a Hugging Face directory", tmp_path)


def test_wanda_needs_the_tokenizer(tmp_path, cli, calibration_text):
    result = cli(
        "prune", TINY_LLAMA, "--target", "0.5", "--method", "wanda", "--calibration", calibration_text,
        "-o", tmp_path / "out",
    )
    assert_usage_error(result, "needs the model's tokenizer files", tmp_path)


def test_output_that_exists_and_is_not_empty(tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("prune", TINY_LLAMA, "--target", "0.5", "-o", out)
    assert result.exit_code == 2 and "exists and is not empty; pass --overwrite" in result.stderr
    result = cli("prune", TINY_LLAMA, "--target", "0.5", "-o", out, "--overwrite")
    assert result.exit_code == 2 and "replaces only an earlier htsr prune output" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_inside_the_input_directory_or_containing_it(tmp_path, cli):
    model = tmp_path / "model"
    model.mkdir()
    for path in TINY_LLAMA.iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    result = cli("prune", model, "--target", "0.5", "-o", model / "pruned")
    assert_usage_error(result, "lies inside the input directory", model)
    result = cli("prune", model, "--target", "0.5", "-o", tmp_path, "--overwrite")
    assert result.exit_code == 2 and "contains the input" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_bad_allocation_files(tmp_path, cli):
    base = ("prune", TINY_LLAMA, "-o", tmp_path / "out", "--allocation")
    assert_usage_error(cli(*base, tmp_path / "none.json"), "no such file", tmp_path)
    wrong = tmp_path / "report.json"
    wrong.write_text(json.dumps({"schema": "htsr.report/1", "layers": []}))
    assert_usage_error(cli(*base, wrong), "not an htsr.sparsity/1 file", tmp_path)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "htsr.sparsity/1", "layers": [
        {"tensor": "encoder.layer.0.attention.self.query.weight", "sparsity": 0.5, "params": 147456}]}))
    assert_usage_error(cli(*base, other), "is not in the checkpoint", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "htsr.sparsity/1", "layers": [
        {"tensor": "model.layers.0.mlp.up_proj.weight", "sparsity": 1.5}]}))
    assert_usage_error(cli(*base, bad), "expected a number in [0, 1)", tmp_path)
