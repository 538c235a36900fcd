"""TempBalance's per-layer learning rates against hand-computed values (algorithms.md section 6)."""

import math

import pytest

from htsr_cli.allocations import LrSettings, base_lr_at, layer_factors, lr_schedule, sigmoid_factors, tb_factors
from htsr_cli.allocations.learning_rates import bn_partner, modules_of
from htsr_cli.errors import HtsrError
from tests.allocations.test_sparsity import approx, layer, report


# --- TempBalance (section 6) ---


def test_tb_linear_test_vector():
    factors = tb_factors([2, 3, 4, 5], "linear", 0.5, 1.5)
    assert [0.1 * f for f in factors] == approx([0.05, 0.083333, 0.116667, 0.15])


def test_tb_maps():
    # sqrt: 4 sqrt(a) / (sqrt 2 + sqrt 3 + 2 + sqrt 5); log2: 4 log2(a) / (1 + log2 3 + 2 + log2 5)
    assert tb_factors([2, 3, 4, 5], "sqrt") == approx([0.766269, 0.938484, 1.083668, 1.211578])
    assert tb_factors([2, 3, 4, 5], "log2") == approx([0.579132, 0.917902, 1.158264, 1.344702])
    assert tb_factors([5, 2, 4, 3], "step") == approx([1.25, 0.5, 1.0, 0.75])
    assert tb_factors([3, 3, 3], "linear") == [1.5, 1.5, 1.5]
    assert tb_factors([2, 4], "linear", 0.2, 2.0) == approx([0.2, 2.0])


def test_sigmoid_map():
    # d = [-1.5, -0.5, 0.5, 1.5]: 10^(2 (sigmoid(10 d) - 1/2)) below the mean, 10^(sigmoid(10 d) - 1/2) above
    assert sigmoid_factors([2, 3, 4, 5]) == approx([0.1000001, 0.1031302, 3.1139178, 3.1622754])
    assert sigmoid_factors([3, 3]) == [1.0, 1.0]


def test_base_lr_schedules():
    assert [base_lr_at(0.1, t, 4, "cosine") for t in range(4)] == approx([0.1, 0.0853553, 0.05, 0.0146447])
    assert [base_lr_at(0.1, t, 4, "linear") for t in range(4)] == approx([0.1, 0.075, 0.05, 0.025])
    assert [base_lr_at(0.1, t, 4, "constant") for t in range(4)] == [0.1] * 4


def cnn():
    return report(
        layer("conv1", 7.0, kind="conv2d", num_evals=147),
        layer("layer1.0.conv1", 2.0, kind="conv2d"),
        layer("layer1.0.conv2", 3.0, kind="conv2d"),
        layer("layer1.0.downsample.0", 9.0, kind="conv2d", num_evals=49),
        layer("layer1.1.conv1", 4.0, kind="conv2d"),
        layer("layer1.1.conv2", None, kind="conv2d", status="fit-failed", reason="no valid power-law fit"),
        layer("layer2.0.conv1", 5.0, kind="conv2d"),
        layer("fc", 1.2, num_evals=10),
    )


def test_layer_factors_keep_first_last_small_and_unfitted_layers_at_one():
    factors = layer_factors(cnn().layers, LrSettings(0.1))
    assert {name: f.factor for name, f in factors.items()} == approx(
        {
            "conv1": 1.0, "layer1.0.conv1": 0.5, "layer1.0.conv2": 0.5 + 1 / 3, "layer1.0.downsample.0": 1.0,
            "layer1.1.conv1": 0.5 + 2 / 3, "layer1.1.conv2": 1.0, "layer2.0.conv1": 1.5, "fc": 1.0,
        }
    )
    assert factors["conv1"].note == "first layer keeps the base LR"
    assert factors["fc"].note == "last layer keeps the base LR"
    assert factors["layer1.0.downsample.0"].note == "49 eigenvalues < 50, keeps the base LR"
    assert factors["layer1.1.conv2"].note == "no alpha: fit-failed (no valid power-law fit)"


def test_layer_factors_by_block_with_sigmoid():
    # block means: layer1.0 = 2.5, layer1.1 = 4, layer2.0 = 5; mean 11.5 / 3; d = [-4/3, 1/6, 7/6]
    factors = layer_factors(cnn().layers, LrSettings(0.1, map="sigmoid", unit="block"))
    sigmoid = lambda d: 1 / (1 + math.exp(-10 * d))  # noqa: E731
    expected_10 = 10 ** (2 * (sigmoid(-4 / 3) - 0.5))
    assert factors["layer1.0.conv1"].factor == pytest.approx(expected_10)
    assert factors["layer1.0.conv2"].factor == pytest.approx(expected_10)
    assert factors["layer1.1.conv1"].factor == pytest.approx(10 ** (sigmoid(1 / 6) - 0.5))
    assert factors["layer2.0.conv1"].factor == pytest.approx(10 ** (sigmoid(7 / 6) - 0.5))
    assert factors["layer1.0.downsample.0"].factor == 1.0


def test_lr_schedule_batchnorm_follows_its_conv_and_epochs_follow_cosine():
    modules = modules_of(
        ["conv1.weight", "bn1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn1.weight",
         "layer1.0.bn1.bias", "layer1.0.conv2.weight", "layer1.0.bn2.weight", "layer1.0.downsample.0.weight",
         "layer1.0.downsample.1.weight", "layer1.1.conv1.weight", "layer1.1.conv2.weight", "layer2.0.conv1.weight",
         "fc.weight", "fc.bias"]
    )
    schedule = lr_schedule(cnn(), LrSettings(0.1, epochs=4), modules)
    entries = {entry["name"]: entry for entry in schedule["layers"]}
    assert list(entries) == [
        "conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.bn2",
        "layer1.0.downsample.0", "layer1.1.conv1", "layer1.1.conv2", "layer2.0.conv1", "fc",
    ]
    assert entries["layer1.0.bn1"]["factor"] == entries["layer1.0.conv1"]["factor"] == 0.5
    assert entries["layer1.0.bn1"]["note"] == "follows layer1.0.conv1"
    assert entries["layer1.0.bn1"]["kind"] == "norm" and entries["layer1.0.bn1"]["block"] == "layer1.0"
    assert entries["layer1.0.bn2"]["factor"] == pytest.approx(0.5 + 1 / 3)
    assert "layer1.0.downsample.1" not in entries  # no "bn" in its name: the optimizer's default group
    assert entries["layer2.0.conv1"]["lr"] == pytest.approx(0.15)
    assert entries["layer2.0.conv1"]["lrs"] == approx([0.15 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)])
    assert schedule["base_lrs"] == approx([0.1, 0.0853553, 0.05, 0.0146447])
    assert schedule["settings"]["factors"].startswith("fixed")
    assert schedule["summary"] == {"modules": 11, "adjusted": 4, "min_factor": 0.5, "max_factor": 1.5}


def test_bn_partner():
    assert bn_partner("layer1.0.bn1") == "layer1.0.conv1"
    assert bn_partner("bn1") == "conv1"
    assert bn_partner("layer1.0.downsample.1") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_lr": 0.0}, "base_lr="),
        ({"base_lr": -1e-3}, "base_lr="),
        ({"base_lr": 0.1, "map": "cubic"}, "map="),
        ({"base_lr": 0.1, "min_ratio": 2.0, "max_ratio": 1.0}, "min_ratio="),
        ({"base_lr": 0.1, "epochs": 0}, "epochs="),
    ],
)
def test_lr_settings_reject_bad_values(kwargs, message):
    with pytest.raises(HtsrError, match=message):
        LrSettings(**kwargs)
