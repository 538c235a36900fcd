"""htsr prune and htsr eval perplexity on the command line: real runs, hand-checked perplexity, and every bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

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


# ---------------------------------------------------------------- perplexity by hand


def _hand_causal_perplexity(directory: Path, text: str, seq_len: int) -> float:
    import transformers

    from tests.conftest import tiny_tokenizer

    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = tiny_tokenizer()(text)["input_ids"]
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - seq_len + 1, seq_len):
            window = torch.tensor(ids[start : start + seq_len])
            log_probs = torch.log_softmax(model(input_ids=window[None]).logits[0].double(), dim=-1)
            for t in range(1, seq_len):
                nll -= float(log_probs[t - 1, window[t]])
                count += 1
    return math.exp(nll / count)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_causal_perplexity_is_exp_of_the_mean_nll_computed_by_hand(kind, tmp_path, cli, tiny_lms):
    text = tmp_path / "eval.txt"
    text.write_text(tiny_text(150, seed=3))
    result = cli("eval", "perplexity", tiny_lms[kind], "--text", text, "--seq-len", "20", "-f", "json")
    assert result.exit_code == 0, result.stderr
    value = json.loads(result.stdout)
    assert value["metric"] == "perplexity" and value["windows"] == len(text.read_text().split()) // 20
    assert value["perplexity"] == pytest.approx(_hand_causal_perplexity(tiny_lms[kind], text.read_text(), 20), rel=1e-6)


def test_masked_lm_gets_pseudo_perplexity_computed_by_hand(tmp_path, cli, tiny_lms):
    import transformers

    from tests.conftest import tiny_tokenizer

    text = tmp_path / "eval.txt"
    text.write_text(tiny_text(40, seed=5))
    result = cli("eval", "perplexity", tiny_lms["bert"], "--text", text, "--seq-len", "12", "-f", "json")
    assert result.exit_code == 0, result.stderr
    value = json.loads(result.stdout)
    assert value["objective"] == "masked" and value["metric"] == "pseudo-perplexity"
    tokenizer = tiny_tokenizer()
    model = transformers.AutoModelForMaskedLM.from_pretrained(tiny_lms["bert"]).eval()
    ids = tokenizer(text.read_text(), add_special_tokens=False)["input_ids"]
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 10 + 1, 10):
            sequence = [tokenizer.cls_token_id, *ids[start : start + 10], tokenizer.sep_token_id]
            for position in range(1, 11):
                masked = list(sequence)
                masked[position] = tokenizer.mask_token_id
                logits = model(input_ids=torch.tensor([masked])).logits[0, position].double()
                nll -= float(torch.log_softmax(logits, dim=-1)[sequence[position]])
                count += 1
    assert value["tokens_scored"] == count
    assert value["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_perplexity_table_says_which_protocol_was_used(tmp_path, cli, tiny_lms):
    text = tmp_path / "eval.txt"
    text.write_text(tiny_text(100))
    result = cli("eval", "perplexity", tiny_lms["bert"], "--text", text, "--seq-len", "16")
    assert result.exit_code == 0, result.stderr
    assert "pseudo-perplexity" in result.stdout and "masked" in result.stdout


@pytest.mark.minilm
def test_minilm_has_no_lm_head_so_no_perplexity(tmp_path, cli, minilm_dir):
    text = tmp_path / "eval.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 20)
    result = cli("eval", "perplexity", minilm_dir, "--text", text, "--seq-len", "16", "-o", tmp_path / "ppl.txt")
    assert_usage_error(result, "has no weights for 'cls.predictions", tmp_path)
    assert "pseudo-perplexity is not defined" in result.stderr
    assert not (tmp_path / "ppl.txt").exists()


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written


@pytest.mark.parametrize("target", ["1.5", "0", "1", "-0.2"])
def test_target_outside_zero_one(tmp_path, cli, target):
    result = cli("prune", TINY_LLAMA, "--target", target, "-o", tmp_path / "out")
    assert_usage_error(result, "--target must be a sparsity strictly between 0 and 1", tmp_path)


def test_missing_target(tmp_path, cli):
    assert_usage_error(cli("prune", TINY_LLAMA, "-o", tmp_path / "out"), "--target is required", tmp_path)


def test_wanda_without_calibration(tmp_path, cli, tiny_lms):
    result = cli("prune", tiny_lms["llama"], "--target", "0.5", "--method", "wanda", "-o", tmp_path / "out")
    assert_usage_error(result, "--method wanda needs --calibration TEXT_FILE", tmp_path)


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


def test_eval_bad_inputs(tmp_path, cli, tiny_lms):
    assert_usage_error(
        cli("eval", "perplexity", tiny_lms["llama"], "--text", tmp_path / "none.txt"), "--text", tmp_path
    )
    short = tmp_path / "short.txt"
    short.write_text("w1 w2 w3")
    result = cli("eval", "perplexity", tiny_lms["llama"], "--text", short, "--seq-len", "16", "-o", tmp_path / "r.txt")
    assert_usage_error(result, "fewer than one window of 16", tmp_path)
    assert not (tmp_path / "r.txt").exists()
    result = cli("eval", "perplexity", TINY_LLAMA / "model-00001-of-00004.safetensors", "--text", short)
    assert_usage_error(result, "not a single weight file", tmp_path)
