"""`htsr eval perplexity` on the command line: which protocol it used, and every bad input."""

from __future__ import annotations

import pytest

from tests.conftest import tiny_text
from tests.cli.test_prune import TINY_LLAMA, assert_usage_error


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
