"""htsr smooth as a library: WeightWatcher 0.7.7's SVDSmoothing numbers, layouts, and the planted low-rank case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from htsr_cli.errors import InvalidSetting
from htsr_cli.pruning.smoothing import SmoothSettings, smooth_checkpoint
from tests.results.test_schemas import validate

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "weightwatcher-0.7.7" / "smooth.json"
SETTINGS = {"svd": SmoothSettings("percent", 0.5), "detX": SmoothSettings("detx")}


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


def reference_state(reference: dict) -> dict[str, torch.Tensor]:
    return {key: torch.tensor(value, dtype=torch.float32) for key, value in {**reference["input"], **reference["biases"]}.items()}


@pytest.mark.parametrize("method", ["svd", "detX"])
def test_equals_weightwatchers_svd_smoothing(tmp_path, reference, method):
    """benchmarks/ww_smooth_reference.py: every layer kind WeightWatcher smooths, and one it leaves (4 eigenvalues)."""
    state = reference_state(reference)
    save_file(state, str(tmp_path / "tiny.safetensors"))
    record = smooth_checkpoint(str(tmp_path / "tiny.safetensors"), tmp_path / "out", SETTINGS[method])
    smoothed = load_file(str(tmp_path / "out" / "tiny.safetensors"))
    for key, values in reference["runs"][method]["output"].items():
        expected = torch.tensor(values)
        scale = float(expected.abs().max())
        assert torch.allclose(smoothed[key], expected, rtol=0, atol=1e-5 * scale), key
    assert torch.equal(smoothed["small.weight"], state["small.weight"])  # 4 eigenvalues < 8
    assert torch.equal(smoothed["tall.bias"], state["tall.bias"])
    notes = {layer["name"]: layer["note"] for layer in record["layers"]}
    assert notes == {"embed": None, "conv": None, "tall": None, "wide": None, "small": "4 eigenvalues < 8, not smoothed"}
    validate(record)


def test_ranks_kept_follow_weightwatchers_counting(tmp_path, reference):
    save_file(reference_state(reference), str(tmp_path / "tiny.safetensors"))
    record = smooth_checkpoint(str(tmp_path / "tiny.safetensors"), tmp_path / "out", SmoothSettings("percent", 0.5))
    kept = {layer["name"]: (layer["count"], layer["kept_per_slice"]) for layer in record["layers"]}
    # int(0.5 M slices), then ceil(count / slices) per kernel position; conv: M = 5, 9 positions
    assert kept == {"embed": (5, 5), "conv": (22, 3), "tall": (6, 6), "wide": (4, 4), "small": (None, None)}


def test_a_planted_low_rank_layer_comes_back_low_rank_in_a_torch_file(tmp_path):
    """A rank-4 signal plus noise in a Lightning-style torch file: --percent 0.2 keeps 4 of 20 singular values."""
    generator = torch.Generator().manual_seed(0)
    signal = torch.randn(40, 4, generator=generator) @ torch.randn(4, 20, generator=generator)
    noise = 0.01 * torch.randn(40, 20, generator=generator)
    source = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"module.blocks.0.fc.weight": (signal + noise).to(torch.bfloat16)}, "epoch": 3}, source)
    record = smooth_checkpoint(str(source), tmp_path / "out", SmoothSettings("percent", 0.2))
    saved = torch.load(tmp_path / "out" / "last.ckpt", weights_only=True)
    smoothed = saved["state_dict"]["module.blocks.0.fc.weight"]
    assert saved["epoch"] == 3 and smoothed.dtype == torch.bfloat16
    assert record["layers"][0]["kept_per_slice"] == 4
    error = torch.linalg.norm(smoothed.float() - signal)
    assert error < 0.6 * torch.linalg.norm(noise) + 0.01 * torch.linalg.norm(signal)  # bfloat16 rounding on top
    assert torch.equal(torch.load(source, weights_only=True)["state_dict"]["module.blocks.0.fc.weight"],
                       (signal + noise).to(torch.bfloat16))  # the input is never written to


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "percent"}, "percent=None: is required with the percent method"),
    ({"method": "percent", "percent": 1.0}, "percent=1.0: must be a fraction strictly between 0 and 1"),
    ({"method": "percent", "percent": float("nan")}, "must be a fraction strictly between 0 and 1"),
    ({"method": "detx", "percent": 0.5}, "percent=0.5: is only used by the percent method"),
    ({"method": "lambda_min"}, "method='lambda_min': must be one of percent, detx"),
])
def test_settings_refuse_bad_values(kwargs, message):
    with pytest.raises(InvalidSetting, match=message.replace("(", r"\(").replace(")", r"\)")):
        SmoothSettings(**kwargs)
