"""htsr prune and htsr eval perplexity on a GPU agree with the CPU. Skipped on machines without one."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FIXTURES, tiny_text
from htsr_cli.lm.perplexity import PerplexitySettings, evaluate_perplexity
from htsr_cli.pruning import CalibrationSettings, PruneSettings, prune_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_magnitude_on_cuda_zeroes_the_same_weights(tmp_path):
    for device in ("cpu", "cuda"):
        record = prune_checkpoint(
            str(FIXTURES / "tiny-llama"), tmp_path / device, PruneSettings(target=0.6, allocation="uniform", device=device)
        )
        assert record["settings"]["device"] == device
    for shard in sorted((tmp_path / "cpu").glob("*.safetensors")):
        assert shard.read_bytes() == (tmp_path / "cuda" / shard.name).read_bytes()


def test_wanda_on_cuda_meets_the_target_row_by_row(tmp_path, tiny_lms, calibration_text):
    settings = PruneSettings(
        target=0.5, allocation="owl", method="wanda", device="cuda",
        calibration=CalibrationSettings(calibration_text, samples=4, seq_len=24),
    )
    record = prune_checkpoint(str(tiny_lms["llama"]), tmp_path / "out", settings)
    assert abs(record["summary"]["achieved"] - 0.5) < 1e-4
    assert all(layer["achieved_ratio"] == layer["pruned"] / layer["params"] for layer in record["layers"] if layer["pruned"])


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_perplexity_on_cuda_matches_the_cpu(kind, tmp_path, tiny_lms):
    text = tmp_path / "eval.txt"
    text.write_text(tiny_text(200))
    cpu = evaluate_perplexity(str(tiny_lms[kind]), text, PerplexitySettings(seq_len=24, device="cpu"))
    cuda = evaluate_perplexity(str(tiny_lms[kind]), text, PerplexitySettings(seq_len=24, device="cuda"))
    assert cuda["device"] == "cuda" and cuda["tokens_scored"] == cpu["tokens_scored"]
    assert cuda["perplexity"] == pytest.approx(cpu["perplexity"], rel=1e-4)


def test_smoothing_on_cuda_matches_the_cpu(tmp_path):
    from safetensors.torch import load_file

    from htsr_cli.pruning.smoothing import SmoothSettings, smooth_checkpoint

    for device in ("cpu", "cuda"):
        record = smooth_checkpoint(str(FIXTURES / "tiny-llama"), tmp_path / device, SmoothSettings("detx", device=device))
        assert record["settings"]["device"] == device
    for shard in sorted((tmp_path / "cpu").glob("*.safetensors")):
        cpu, cuda = load_file(str(shard)), load_file(str(tmp_path / "cuda" / shard.name))
        for key, tensor in cpu.items():  # float64 on both; the stored float32 may differ in its last bit
            assert torch.allclose(cuda[key], tensor, rtol=0, atol=1e-6 * float(tensor.abs().max())), key
