"""The live TempBalance scheduler on a small CNN (fixtures.layouts.TinyCNN)."""

import json

import pytest
import torch
import yaml
from fixtures.layouts import TinyCNN

from htsr_cli.allocations import LrSettings, TempBalance, lr_schedule
from htsr_cli.allocations.learning_rates import modules_of
from htsr_cli.engine.pipeline import analyze
from htsr_cli.errors import HtsrError


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyCNN()


def expected_factors(model):
    """Section 6 by hand on alphas fitted independently: drop conv1 (first), fc3 (last, 10 eigenvalues)."""
    report = analyze(model.state_dict(), xmin="median", device="cpu")
    alphas = {layer.name: layer.alpha for layer in report.layers}
    middle = ["conv2", "conv3", "fc1", "fc2"]  # 288, 576, 256, 256 eigenvalues: all >= 50
    low, high = min(alphas[name] for name in middle), max(alphas[name] for name in middle)
    factors = {name: 0.5 + (alphas[name] - low) / (high - low) for name in middle}
    return {"conv1": 1.0, **factors, "fc3": 1.0}


def test_param_groups_hold_every_parameter_once_with_batchnorm_beside_its_conv(model):
    tb = TempBalance(model, base_lr=0.1)
    groups = tb.param_groups()
    members = {group["name"]: {id(p) for p in group["params"]} for group in groups}
    assert list(members) == ["conv1", "conv2", "conv3", "fc1", "fc2", "fc3"]
    assert members["conv2"] == {id(model.conv2.weight), id(model.bn2.weight), id(model.bn2.bias)}
    assert members["fc1"] == {id(model.fc1.weight), id(model.fc1.bias)}
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))
    expected = expected_factors(model)
    assert {group["name"]: group["lr"] for group in groups} == pytest.approx(
        {name: 0.1 * factor for name, factor in expected.items()}
    )


def test_step_recomputes_alphas_from_the_live_weights(model):
    tb = TempBalance(model, base_lr=0.1)
    optimizer = torch.optim.SGD(tb.param_groups(), lr=0.1, momentum=0.9)
    with torch.no_grad():  # change the spectra: the factors must follow
        model.fc1.weight.mul_(torch.linspace(0.1, 3.0, 1024))
        model.conv3.weight.pow_(3)
    tb.step(optimizer, lr=0.02)
    expected = expected_factors(model)
    assert {group["name"]: group["lr"] for group in optimizer.param_groups} == pytest.approx(
        {name: 0.02 * factor for name, factor in expected.items()}
    )
    assert tb.factors == pytest.approx(expected)


def test_default_group_for_modules_without_a_factor():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)
    )
    groups = TempBalance(model, base_lr=0.1).param_groups()
    assert [(group["name"], len(group["params"])) for group in groups] == [
        ("0", 2), ("default", 2), ("2", 2), ("3", 2)
    ]
    assert groups[1]["lr"] == 0.1


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_from_schedule_uses_the_exported_factors(model, tmp_path, suffix):
    state = model.state_dict()
    schedule = lr_schedule(analyze(state, xmin="median"), LrSettings(0.2), modules_of(state))
    path = tmp_path / f"schedule{suffix}"
    path.write_text(json.dumps(schedule) if suffix == ".json" else yaml.safe_dump(schedule))
    tb = TempBalance.from_schedule(model, path)
    assert tb.fixed and tb.settings.base_lr == 0.2
    lrs = {entry["name"]: entry["lr"] for entry in schedule["layers"]}
    groups = tb.param_groups()
    assert {group["name"]: group["lr"] for group in groups} == pytest.approx(
        {name: lrs[name] for name in ("conv1", "conv2", "conv3", "fc1", "fc2", "fc3")}
    )
    optimizer = torch.optim.SGD(groups, lr=0.2)
    tb.step(optimizer, lr=0.1)  # fixed factors: no re-analysis, just the new base LR
    assert optimizer.param_groups[1]["lr"] == pytest.approx(lrs["conv2"] / 2)


def test_from_schedule_rejects_another_models_schedule(model, tmp_path):
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps({"schema": "htsr.lr_schedule/1", "settings": {
        "base_lr": 0.1, "map": "linear", "unit": "layer", "min_ratio": 0.5, "max_ratio": 1.5,
        "analysis": {"xmin": "median"}}, "layers": [{"name": "encoder.0", "kind": "linear", "factor": 1.2}]}))
    with pytest.raises(HtsrError, match="'encoder.0' is not in the model"):
        TempBalance.from_schedule(model, path)
    path.write_text('{"schema": "htsr.report/1"}')
    with pytest.raises(HtsrError, match="not an htsr.lr_schedule/1 file"):
        TempBalance.from_schedule(model, path)
