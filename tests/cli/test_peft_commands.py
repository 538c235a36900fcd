"""PEFT adapters on the command line: analyze (alone and --merged), compare BASE ADAPTER,
allocate experts and lr-schedule export on the merged model, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.conftest import assert_user_error

peft = pytest.importorskip("peft")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(32, 64)
        self.down = nn.Linear(64, 32)


class Decoder(nn.Module):
    """Numbered blocks, so AlphaLoRA has blocks to allocate over."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(3))


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory) -> tuple[Path, Path]:
    """(adapter directory, base safetensors) of a rank-16 LoRA written by peft."""
    root = tmp_path_factory.mktemp("peft")
    torch.manual_seed(0)
    model = Decoder()
    base = root / "base.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, base)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules=["up", "down"]))
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_" in name:
                parameter.add_(0.2 * torch.randn_like(parameter))
    wrapped.save_pretrained(root / "adapter")
    return root / "adapter", base


def test_analyze_adapter_alone_and_merged(cli, fine_tune):
    adapter, base = fine_tune
    alone = cli("analyze", adapter, "-f", "json", "-q", "--precision", "float64")
    assert alone.exit_code == 0, alone.output
    layers = json.loads(alone.stdout)["layers"]
    assert [layer["num_evals"] for layer in layers] == [16] * 6
    storage = {layer["name"]: layer["storage"] for layer in layers}
    assert storage["layers.0.up"] == "lora r=16 of 64x32" and storage["layers.2.down"] == "lora r=16 of 32x64"
    merged = cli("analyze", adapter, "--merged", base, "-f", "json", "-q")
    assert merged.exit_code == 0, merged.output
    report = json.loads(merged.stdout)
    assert report["checkpoint"] == f"{adapter} merged into {base}"
    assert [layer["num_evals"] for layer in report["layers"]] == [32] * 6


def test_compare_base_with_adapter_shows_the_relative_change(cli, fine_tune):
    adapter, base = fine_tune
    result = cli("compare", base, adapter, "--weights", "-f", "json", "-q")
    assert result.exit_code == 0, result.output
    layers = json.loads(result.stdout)["layers"]
    assert len(layers) == 6 and all(layer["relative_error"] > 0 for layer in layers)


def test_allocations_take_the_merged_model(cli, fine_tune):
    adapter, base = fine_tune
    experts = cli("allocate", "experts", adapter, "--merged", base, "--min-evals", "4", "-f", "json", "-q")
    assert experts.exit_code == 0, experts.output
    assert json.loads(experts.stdout)["summary"]["blocks"] == 3
    schedule = cli("lr-schedule", "export", adapter, "--merged", base, "--base-lr", "1e-4", "-f", "json", "-q")
    assert schedule.exit_code == 0, schedule.output
    assert sorted(entry["name"] for entry in json.loads(schedule.stdout)["layers"]) == sorted(
        f"layers.{block}.{name}" for block in range(3) for name in ("up", "down")
    )


def test_adapter_without_its_base_where_the_model_is_needed(cli, fine_tune):
    adapter, base = fine_tune
    assert_user_error(cli("allocate", "experts", adapter), "is a PEFT adapter: AlphaLoRA needs the model it fine-tunes; add --merged BASE")
    assert_user_error(cli("lr-schedule", "export", adapter, "--base-lr", "0.1"), "TempBalance needs the model it fine-tunes")
    assert_user_error(cli("analyze", base, "--merged", base), "--merged needs a PEFT adapter directory")
    assert_user_error(cli("compare", adapter, adapter), "compare it with the base checkpoint it fine-tunes")


def test_merged_into_the_wrong_base(cli, fine_tune, tmp_path):
    adapter, _ = fine_tune
    other = tmp_path / "other.safetensors"
    shapes = {"up": (64, 33), "down": (32, 64)}
    save_file({f"layers.{i}.{name}.weight": torch.zeros(shape) for i in range(3) for name, shape in shapes.items()}, other)
    assert_user_error(cli("analyze", adapter, "--merged", other), "the base's weight is [64, 33]: not this adapter's base")
    assert_user_error(cli("analyze", adapter, "--merged", tmp_path / "nowhere.safetensors"), "no such file or directory")


def test_track_a_lora_run_merged_into_its_base(cli, tmp_path):
    """Adapter checkpoints saved as a Trainer saves them: alone, each is its update; with --merged, the model."""
    torch.manual_seed(0)
    model = Decoder()
    base = tmp_path / "base.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, base)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules=["up", "down"]))
    run = tmp_path / "run"
    for step in (5, 10, 15):
        with torch.no_grad():
            for name, parameter in wrapped.named_parameters():
                if "lora_" in name:
                    parameter.add_(0.1 * torch.randn_like(parameter))
        wrapped.save_pretrained(run / f"checkpoint-{step}")
    alone = cli("track", run, "-f", "json", "-q")
    assert alone.exit_code == 0, alone.output
    assert {row["num_evals"] for row in json.loads(alone.stdout)["layers"]} == {16}
    merged = cli("track", run, "--merged", base, "-f", "json", "-q")
    assert merged.exit_code == 0, merged.output
    document = json.loads(merged.stdout)
    assert [c["reused"] for c in document["checkpoints"]] == [False] * 3  # other source, other report
    assert {row["num_evals"] for row in document["layers"]} == {32}
    direct = json.loads(cli("analyze", run / "checkpoint-10", "--merged", base, "-f", "json", "-q").stdout)
    assert [row["alpha"] for row in document["layers"] if row["step"] == 10] == [layer["alpha"] for layer in direct["layers"]]
    again = json.loads(cli("track", run, "--merged", base, "-f", "json", "-q").stdout)
    assert [c["reused"] for c in again["checkpoints"]] == [True] * 3
