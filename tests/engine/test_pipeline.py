"""The library pipeline: every reader gives the same numbers, bad layers are reported, memory stays bounded."""

from __future__ import annotations

import math
import threading
import weakref

import pytest
import torch
from safetensors.torch import save_file

import htsr_cli
from htsr_cli.engine import pipeline as analysis
from htsr_cli.engine import scheduling
from htsr_cli.errors import HtsrError
from htsr_cli.results.report import Report


def alphas(report: Report) -> dict[str, float | None]:
    return {layer.name: layer.alpha for layer in report.layers}


def test_report_layers_follow_module_order_and_skip_non_matrices(state_dict):
    report = htsr_cli.analyze(state_dict)
    assert [layer.name for layer in report.layers] == [
        "embed", "features.0", "features.3", "blocks.0.fc1", "blocks.0.fc2",
        "blocks.1.fc1", "blocks.1.fc2", "head",
    ]
    kinds = {layer.name: layer.kind for layer in report.layers}
    assert kinds["embed"] == "embedding" and kinds["features.0"] == "conv2d" and kinds["features.3"] == "conv1d"
    assert report.layer("features.0").num_evals == 9 * 16
    assert report.layer("blocks.1.fc1").block == "blocks.1"


def test_conv_scale_changes_norms_but_not_alpha(state_dict):
    plain = htsr_cli.analyze(state_dict).layer("features.0")
    scaled = htsr_cli.analyze(state_dict, conv_scale=0.5).layer("features.0")
    assert scaled.alpha == pytest.approx(plain.alpha, rel=1e-12)
    assert scaled.lambda_max == pytest.approx(plain.lambda_max * 0.5, rel=1e-12)
    assert htsr_cli.analyze(state_dict, conv_scale=0.5).layer("head").lambda_max == htsr_cli.analyze(state_dict).layer("head").lambda_max


def test_every_reader_gives_the_same_alphas(tmp_path, state_dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, vocab_size=200, tie_word_embeddings=False)
    )
    weights = {key: value.detach().clone() for key, value in model.state_dict().items()}
    torch.save(weights, tmp_path / "model.pth")
    save_file(weights, tmp_path / "model.safetensors")
    model.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert len(list((tmp_path / "hf").glob("*.safetensors"))) > 1
    expected = alphas(htsr_cli.analyze(model))
    assert len(expected) == 2 * 7 + 2 and all(value is not None for value in expected.values())
    for source in (weights, tmp_path / "model.pth", tmp_path / "model.safetensors", tmp_path / "hf"):
        assert alphas(htsr_cli.analyze(source)) == expected, source


def test_non_finite_layer_fails_and_the_rest_is_analysed(state_dict):
    state_dict["blocks.0.fc2.weight"][3, 4] = float("nan")
    report = htsr_cli.analyze(state_dict)
    bad = report.layer("blocks.0.fc2")
    assert (bad.status, bad.reason, bad.alpha, bad.quality) == ("failed", "non-finite weights", None, None)
    assert report.layer("blocks.1.fc2").status == "ok"
    assert report.summary["failed"] == 1 and report.summary["analyzed"] == len(report.layers) - 1


def test_quantized_and_tiny_layers_are_reported_not_dropped(state_dict):
    state_dict["blocks.1.fc2.weight"] = torch.randint(-128, 127, (80, 120), dtype=torch.int8)
    report = htsr_cli.analyze(state_dict, min_evals=30)
    quantized = report.layer("blocks.1.fc2")
    assert (quantized.status, quantized.reason, quantized.alpha) == ("skipped", "quantized", None)
    head = report.layer("head")
    assert head.status == "skipped" and head.reason == "10 eigenvalues < min_evals 30"
    assert report.summary["skipped"] == 2


def test_layers_regex_filters_and_must_match(state_dict):
    report = htsr_cli.analyze(state_dict, layers=r"fc1$")
    assert [layer.name for layer in report.layers] == ["blocks.0.fc1", "blocks.1.fc1"]
    with pytest.raises(HtsrError, match=r"layers='nomatch': matches none"):
        htsr_cli.analyze(state_dict, layers="nomatch")
    with pytest.raises(HtsrError, match="invalid regular expression"):
        htsr_cli.analyze(state_dict, layers="fc(")


@pytest.mark.parametrize("concurrent", [True, False])
def test_streaming_holds_a_bounded_number_of_tensors(monkeypatch, concurrent):
    """Analysing 200 layers never has more than a few batches of loaded weights alive at once.

    Alive at most: PREFETCH batches queued, the one the loader waits to queue and
    the tensor it read for the next, the one waiting for a free solve slot, and
    one per solve slot (two solves at once on a multi-core CPU).
    """
    layers = {f"layers.{i}.weight": torch.randn(96, 64) for i in range(200)}
    alive: set[int] = set()
    peak = 0
    original = analysis.Eigensolver.transfer

    def tracked(self, tensor):
        nonlocal peak
        if threading.current_thread().name != "htsr-loader":  # the solver's own no-op call
            return original(self, tensor)
        moved = original(self, tensor).clone()  # a fresh tensor per layer, as a file reader makes
        ident = id(moved)
        alive.add(ident)
        weakref.finalize(moved, alive.discard, ident)
        peak = max(peak, len(alive))
        return moved

    monkeypatch.setattr(analysis.Eigensolver, "transfer", tracked)
    monkeypatch.setattr(scheduling, "MAX_BATCH_SLICES", 4)
    report = htsr_cli.analyze(layers, concurrent_solves=concurrent)
    assert len(report.layers) == 200 and all(layer.status == "ok" for layer in report.layers)
    slots = 2 if concurrent and torch.get_num_threads() >= 2 else 1
    assert peak <= (scheduling.PREFETCH + 2 + slots) * 4 + 1


@pytest.mark.minilm
def test_real_trained_model_end_to_end(minilm_dir):
    from safetensors import safe_open

    report = htsr_cli.analyze(minilm_dir)
    with safe_open(minilm_dir / "model.safetensors", framework="pt") as handle:
        matrices = {
            key[: -len(".weight")]
            for key in handle.keys()
            if key.endswith(".weight") and len(handle.get_slice(key).get_shape()) == 2
        }
    names = [layer.name for layer in report.layers]
    assert set(names) == matrices and len(names) == len(matrices)
    assert names[0] == "embeddings.word_embeddings" and names[-1] == "pooler.dense"
    assert names.index("encoder.layer.1.attention.self.query") > names.index("encoder.layer.0.output.dense")
    ok = [layer for layer in report.layers if layer.status == "ok"]
    assert len(ok) >= len(names) - 1  # token_type_embeddings (2 x 384) has 2 eigenvalues: skipped
    assert all(math.isfinite(layer.alpha) and layer.alpha > 1 for layer in ok)
    assert report.summary["analyzed"] == len(ok)
    assert report.summary["mean_alpha"] == pytest.approx(sum(layer.alpha for layer in ok) / len(ok))
    # A trained encoder: most of its layers sit in the healthy band.
    assert report.summary["quality_counts"]["ok"] >= len(ok) // 2


def test_conv_scale_applies_to_the_farms_spectrum_too(state_dict):
    from htsr_cli.settings import FarmsSettings

    farms = FarmsSettings(window=16, steps=2)
    plain = htsr_cli.analyze(state_dict, farms=farms).layer("features.0")
    scaled = htsr_cli.analyze(state_dict, farms=farms, conv_scale=0.5).layer("features.0")
    assert scaled.alpha_farms == pytest.approx(plain.alpha_farms, rel=1e-9)
    assert scaled.xmin_farms == pytest.approx(plain.xmin_farms * 0.5, rel=1e-12)
    assert scaled.xmin == pytest.approx(plain.xmin * 0.5, rel=1e-12)
