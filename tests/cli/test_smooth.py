"""`htsr smooth` on the command line: a real run measured with `htsr eval perplexity`, and every bad input
(exit 2, one line, nothing written)."""

from __future__ import annotations

import json
import math

import pytest

from tests.cli.test_prune import TINY_LLAMA, assert_usage_error
from tests.results.test_schemas import validate


def test_smooth_then_perplexity_of_the_smoothed_model(tmp_path, cli, tiny_lms, calibration_text):
    out = tmp_path / "out"
    result = cli("smooth", tiny_lms["llama"], "--method", "detx", "--device", "cpu", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "SVD smoothing (detX condition)" in result.stdout
    record = json.loads((out / "htsr-smooth.json").read_text())
    validate(record)
    assert record["settings"] == {"method": "detx", "percent": None, "device": "cpu"}
    assert record["summary"]["smoothed_matrices"] > 0
    assert {path.name for path in tiny_lms["llama"].iterdir()} | {"htsr-smooth.json"} == {path.name for path in out.iterdir()}
    dense = cli("eval", "perplexity", tiny_lms["llama"], "--text", calibration_text, "--seq-len", "32", "--max-tokens", "200", "-f", "json")
    smoothed = cli("eval", "perplexity", out, "--text", calibration_text, "--seq-len", "32", "--max-tokens", "200", "-f", "json")
    assert dense.exit_code == 0 and smoothed.exit_code == 0, smoothed.stderr
    before, after = json.loads(dense.stdout), json.loads(smoothed.stdout)
    assert math.isfinite(after["perplexity"]) and after["perplexity"] != before["perplexity"]


def test_percent_on_a_sharded_directory_and_overwrite(tmp_path, cli):
    out = tmp_path / "out"
    result = cli("smooth", TINY_LLAMA, "--percent", "0.5", "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    record = json.loads((out / "htsr-smooth.json").read_text())
    q_proj = next(layer for layer in record["layers"] if layer["name"] == "model.layers.0.self_attn.q_proj")
    assert q_proj["count"] == q_proj["num_evals"] // 2 and 0 < q_proj["relative_change"] < 1
    assert cli("smooth", TINY_LLAMA, "--percent", "0.5", "-o", out).exit_code == 2
    assert cli("smooth", TINY_LLAMA, "--method", "detx", "-o", out, "--overwrite", "-q").exit_code == 0
    assert json.loads((out / "htsr-smooth.json").read_text())["settings"]["method"] == "detx"


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written


@pytest.mark.parametrize("args, message", [
    ((), "say how many singular values to keep: --percent P (a fraction) or --method detx"),
    (("--percent", "1.5"), "--percent 1.5: must be a fraction strictly between 0 and 1"),
    (("--percent", "0"), "--percent 0.0: must be a fraction strictly between 0 and 1"),
    (("--method", "percent"), "--percent is required with the percent method"),
    (("--method", "detx", "--percent", "0.5"), "--percent 0.5: is only used by the percent method"),
])
def test_bad_settings(tmp_path, cli, args, message):
    assert_usage_error(cli("smooth", TINY_LLAMA, *args, "-o", tmp_path / "out"), message, tmp_path)


def test_bad_checkpoints_and_outputs(tmp_path, cli):
    result = cli("smooth", tmp_path / "missing.safetensors", "--percent", "0.5", "-o", tmp_path / "out")
    assert_usage_error(result, "missing.safetensors", tmp_path)
    prune_out = tmp_path / "pruned"
    assert cli("prune", TINY_LLAMA, "--target", "0.5", "-o", prune_out, "-q").exit_code == 0
    result = cli("smooth", TINY_LLAMA, "--percent", "0.5", "-o", prune_out, "--overwrite")
    assert result.exit_code == 2 and "replaces only an earlier htsr smooth output" in result.stderr
    assert (prune_out / "htsr-prune.json").is_file()
    result = cli("smooth", TINY_LLAMA, "--percent", "0.5", "-o", TINY_LLAMA / "smoothed")
    assert result.exit_code == 2 and "lies inside the input directory" in result.stderr
    assert not (TINY_LLAMA / "smoothed").exists()


def test_a_checkpoint_with_nothing_to_smooth(tmp_path, cli):
    import torch

    source = tmp_path / "small.pth"
    torch.save({"fc.weight": torch.randn(4, 3), "norm.weight": torch.ones(4)}, source)
    result = cli("smooth", source, "--percent", "0.5", "-o", tmp_path / "out")
    assert_usage_error(result, "no weight matrix to smooth", tmp_path)
