"""PEFT LoRA adapters written by peft itself: the update's spectrum from its r x r core,
the merged model against peft's own merge, the config's patterns, and bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from htsr_cli.checkpoints import open_checkpoint
from htsr_cli.checkpoints.sources import MergedAdapter
from htsr_cli.engine.pipeline import analyze
from htsr_cli.errors import HtsrError

peft = pytest.importorskip("peft")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(60, 40)
        self.fc1 = nn.Linear(40, 64)
        self.fc2 = nn.Linear(64, 48)
        self.conv = nn.Conv2d(3, 24, 3)
        self.head = nn.Linear(48, 3)


def _write(tmp_path: Path, **config) -> tuple[Path, Path, nn.Module]:
    """(adapter directory, base safetensors, the peft model) for a LoraConfig of `config`."""
    torch.manual_seed(0)
    model = Tiny()
    base = tmp_path / "base.safetensors"
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, base)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(**config))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_" in name:  # peft starts B at zero: make every factor (and DoRA magnitude) trained-looking
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
            if name.endswith("modules_to_save.default.weight"):
                parameter.add_(torch.randn(parameter.shape, generator=generator))
    adapter = tmp_path / "adapter"
    wrapped.save_pretrained(adapter)
    return adapter, base, wrapped


def _dense_update(wrapped: nn.Module, module: str) -> torch.Tensor:
    layer = wrapped.get_submodule(f"base_model.model.{module}")
    return layer.get_delta_weight("default").detach().to(torch.float64)


def test_update_spectrum_from_the_core_equals_the_dense_product(tmp_path):
    adapter, _, wrapped = _write(tmp_path, r=16, lora_alpha=32, target_modules=["fc1", "fc2", "embed", "conv"])
    with open_checkpoint(adapter) as checkpoint:
        for module in ("fc1", "fc2", "embed", "conv"):
            core = checkpoint.load(f"{module}.weight")
            dense = _dense_update(wrapped.double(), module)
            assert core.shape[0] == 16
            core_slices = core.reshape(16, core.shape[1], -1).permute(2, 0, 1)
            dense_slices = dense.reshape(dense.shape[0], dense.shape[1], -1).permute(2, 0, 1)
            if module == "embed":
                dense_slices = dense_slices.mT
            for small, full in zip(core_slices, dense_slices):
                expected = torch.linalg.svdvals(full)[:16]
                got = torch.linalg.svdvals(small)
                torch.testing.assert_close(got, expected, rtol=0, atol=1e-10 * float(expected[0]))
    wrapped.float()


def test_analysis_reports_the_rank_r_spectrum(tmp_path):
    adapter, _, wrapped = _write(tmp_path, r=16, lora_alpha=16, target_modules=["fc1"])
    report = analyze(str(adapter), keep_spectra=True, device="cpu", precision="float64")
    [layer] = report.layers
    assert layer.name == "fc1" and layer.num_evals == 16 and layer.storage == "lora r=16 of 64x40"
    dense = _dense_update(wrapped.double(), "fc1")
    expected = torch.linalg.eigvalsh(dense.T @ dense)[-16:]
    torch.testing.assert_close(report.spectra["fc1"].esd, expected, rtol=1e-10, atol=1e-10 * float(expected[-1]))


@pytest.mark.parametrize(
    "config",
    [
        {"r": 8, "lora_alpha": 16},
        {"r": 8, "lora_alpha": 16, "use_rslora": True},
        {"r": 8, "lora_alpha": 16, "use_dora": True},
        {"r": 8, "lora_alpha": 16, "rank_pattern": {"fc2": 4}, "alpha_pattern": {"fc1": 5}, "modules_to_save": ["head"]},
    ],
    ids=["lora", "rslora", "dora", "patterns"],
)
def test_merged_equals_peft_merge_and_unload(tmp_path, config):
    targets = ["fc1", "fc2", "embed", "conv"]
    adapter, base, wrapped = _write(tmp_path, target_modules=targets, **config)
    merged = {key: value.to(torch.float64) for key, value in wrapped.double().merge_and_unload().state_dict().items()}
    with open_checkpoint(MergedAdapter(str(adapter), str(base))) as checkpoint:
        keys = [info.key for info in checkpoint.tensors()]
        assert sorted(keys) == sorted(merged)
        for key in keys:
            torch.testing.assert_close(checkpoint.load(key).to(torch.float64), merged[key], rtol=1e-5, atol=1e-6)


def test_rank_pattern_and_rslora_scale_the_update(tmp_path):
    adapter, _, wrapped = _write(
        tmp_path, r=8, lora_alpha=16, use_rslora=True, rank_pattern={"fc2": 4}, target_modules=["fc1", "fc2"]
    )
    with open_checkpoint(adapter) as checkpoint:
        listed = {info.key: info for info in checkpoint.tensors()}
        assert listed["fc2.weight"].shape == (4, 64)
        for module in ("fc1", "fc2"):
            dense = _dense_update(wrapped.double(), module)
            torch.testing.assert_close(
                torch.linalg.svdvals(checkpoint.load(f"{module}.weight"))[:4], torch.linalg.svdvals(dense)[:4]
            )


def _edit_config(adapter: Path, **changes) -> None:
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"r": -4}, "r must be an integer from 1 to"),
        ({"r": 10**15}, "r must be an integer from 1 to"),
        ({"r": 4}, "r=4 in adapter_config.json does not match its factors"),
        ({"r": "8"}, "r must be an integer"),
        ({"lora_alpha": float("inf")}, "lora_alpha must be a finite nonzero number"),
        ({"rank_pattern": {"fc1": 0}}, "rank_pattern['fc1'] must be an integer"),
        ({"rank_pattern": {"(": 4}}, "is not a valid pattern"),
        ({"target_modules": ["fc2"]}, "target_modules in adapter_config.json does not name it"),
        ({"peft_type": "IA3"}, "only LORA adapters"),
        ({"use_dora": "yes"}, "use_dora must be true or false"),
    ],
)
def test_hostile_config_is_one_line(tmp_path, changes, message):
    adapter, _, _ = _write(tmp_path, r=8, lora_alpha=16, target_modules=["fc1"])
    _edit_config(adapter, **changes)
    with pytest.raises(HtsrError, match=message.replace("[", r"\[").replace("(", r"\(")):
        open_checkpoint(adapter)


def test_config_that_is_not_json(tmp_path):
    adapter, _, _ = _write(tmp_path, r=8, lora_alpha=16, target_modules=["fc1"])
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(HtsrError, match="adapter_config.json is not valid JSON"):
        open_checkpoint(adapter)


def test_missing_weights_file(tmp_path):
    adapter, _, _ = _write(tmp_path, r=8, lora_alpha=16, target_modules=["fc1"])
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(HtsrError, match="needs adapter_model.safetensors or adapter_model.bin"):
        open_checkpoint(adapter)


def test_bin_adapter_reads_through_the_torch_reader(tmp_path):
    adapter, _, wrapped = _write(tmp_path, r=8, lora_alpha=16, target_modules=["fc1"])
    wrapped.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "adapter_model.bin").is_file()
    with open_checkpoint(adapter) as safe, open_checkpoint(tmp_path / "bin") as pickled:
        torch.testing.assert_close(safe.load("fc1.weight"), pickled.load("fc1.weight"))


def test_base_that_does_not_match(tmp_path):
    adapter, base, _ = _write(tmp_path, r=8, lora_alpha=16, target_modules=["fc1", "fc2"])
    wrong_shape = tmp_path / "wrong.safetensors"
    save_file({"fc1.weight": torch.zeros(64, 41), "fc2.weight": torch.zeros(48, 64)}, wrong_shape)
    with pytest.raises(HtsrError, match=r"update of fc1 is \[64, 40\], the base's weight is \[64, 41\]: not this adapter's base"):
        open_checkpoint(MergedAdapter(str(adapter), str(wrong_shape)))
    missing = tmp_path / "missing.safetensors"
    save_file({"fc1.weight": torch.zeros(64, 40)}, missing)
    with pytest.raises(HtsrError, match="adapts fc2, but the base has no tensor fc2.weight"):
        open_checkpoint(MergedAdapter(str(adapter), str(missing)))
    with pytest.raises(HtsrError, match="the base is itself an adapter"):
        open_checkpoint(MergedAdapter(str(adapter), str(adapter)))
    with pytest.raises(HtsrError, match="--merged needs a PEFT adapter directory"):
        open_checkpoint(MergedAdapter(str(base), str(base)))


def test_missing_factor(tmp_path):
    adapter, _, _ = _write(tmp_path, r=8, lora_alpha=16, target_modules=["fc1"])
    from safetensors.torch import load_file

    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({key: value for key, value in tensors.items() if "lora_B" not in key}, adapter / "adapter_model.safetensors")
    with pytest.raises(HtsrError, match="module fc1 has no lora_B tensor"):
        open_checkpoint(adapter)


def test_trained_biases_are_listed_and_merged(tmp_path):
    adapter, base, wrapped = _write(tmp_path, r=8, lora_alpha=16, target_modules=["fc1"], bias="all")
    with torch.no_grad():
        wrapped.base_model.model.fc2.bias.add_(1.0)
    wrapped.save_pretrained(adapter)
    merged = wrapped.merge_and_unload().state_dict()
    with open_checkpoint(MergedAdapter(str(adapter), str(base))) as checkpoint:
        torch.testing.assert_close(checkpoint.load("fc2.bias"), merged["fc2.bias"])


def test_merged_source_survives_the_torchrun_job_message():
    from htsr_cli.engine.distributed import analysis_job, job_source
    from htsr_cli.settings import AnalyzeSettings

    source = MergedAdapter("runs/adapter", "base-model")
    assert job_source(analysis_job(source, AnalyzeSettings(), False, False)) == source
    assert job_source(analysis_job("model.safetensors", AnalyzeSettings(), False, False)) == "model.safetensors"


def test_dora_magnitudes_must_match(tmp_path):
    from safetensors.torch import load_file

    adapter, _, _ = _write(tmp_path, r=8, lora_alpha=16, target_modules=["fc1"], use_dora=True)
    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    key = "base_model.model.fc1.lora_magnitude_vector"
    save_file({**tensors, key: torch.ones(7)}, path)
    with pytest.raises(HtsrError, match="its DoRA magnitude has 7 entries, its update 64 outputs"):
        open_checkpoint(adapter)
    save_file({k: v for k, v in tensors.items() if k != key}, path)
    with pytest.raises(HtsrError, match="use_dora is set but module fc1 has no lora_magnitude_vector"):
        open_checkpoint(adapter)


def test_adapter_weights_without_their_config(tmp_path):
    adapter, _, _ = _write(tmp_path, r=8, lora_alpha=16, target_modules=["fc1"])
    with open_checkpoint(adapter / "adapter_model.safetensors") as named_file:  # the file names its adapter
        assert [info.key for info in named_file.tensors()] == ["fc1.weight"]
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(HtsrError, match="a PEFT adapter's weights without its adapter_config.json"):
        open_checkpoint(adapter)
