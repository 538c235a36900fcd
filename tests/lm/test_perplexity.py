"""Perplexity and pseudo-perplexity (`htsr eval perplexity`) against values computed by hand from the transformers model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_text


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
