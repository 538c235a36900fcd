"""Mode connectivity: the MD tree dataset's summary numbers, a model joined to itself, BatchNorm, seeds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from htsr_cli.errors import HtsrError
from htsr_cli.landscape.connectivity import (
    ConnectivitySettings,
    barrier,
    check_same_architecture,
    connect,
    garipov_learning_rate,
    mode_connectivity,
    mode_connectivity_peak,
)
from htsr_cli.landscape.objective import CLASSIFICATION, Batches


def test_md_tree_summary_numbers_test_vector():
    # errors along 5 points: ends 40 and 50 (mean 45); the furthest from 45 is 60 -> 45 - 60 = -15
    errors = [40.0, 52.0, 60.0, 48.0, 50.0]
    assert mode_connectivity(errors) == pytest.approx(-15.0)
    assert mode_connectivity_peak(errors) == pytest.approx(-60.0)
    # a path dipping below its ends: the furthest from 45 is 30 -> +15
    assert mode_connectivity([40.0, 35.0, 30.0, 42.0, 50.0]) == pytest.approx(15.0)
    # barrier over the straight line between the ends: at t = .5 the line is 45, the path 60 -> 15
    assert barrier(errors, [0.0, 0.25, 0.5, 0.75, 1.0]) == pytest.approx(15.0)


def test_garipov_schedule():
    assert garipov_learning_rate(1.0, 0.25) == 1.0
    assert garipov_learning_rate(1.0, 0.7) == pytest.approx(1.0 - 0.2 / 0.4 * 0.99)
    assert garipov_learning_rate(1.0, 0.95) == pytest.approx(0.01)


def data(seed: int = 0) -> Batches:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return Batches([(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)])


def net(seed: int, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 16)] + ([nn.BatchNorm1d(16)] if batchnorm else []) + [nn.ReLU(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def fit(model: nn.Module, batches: Batches, steps: int = 150) -> nn.Module:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps // len(batches)):
        for x, y in batches:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


@pytest.mark.parametrize("batchnorm", [False, True])
def test_a_model_joined_to_itself_has_no_barrier(batchnorm):
    batches = data()
    model = fit(net(0, batchnorm), batches)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    result = connect(model, model, batches, CLASSIFICATION, ConnectivitySettings(curve_steps=20))
    for path in (result.line, result.bezier):
        assert path.loss_barrier == pytest.approx(0.0, abs=1e-6)
        assert path.error_barrier == pytest.approx(0.0, abs=1e-9)
        assert path.mode_connectivity == pytest.approx(0.0, abs=1e-9)
        assert path.mode_connectivity_peak == pytest.approx(-path.error[0])
    assert result.batchnorm_recomputed is batchnorm
    for name, value in model.state_dict().items():  # the model's own weights and statistics are untouched
        assert torch.equal(value, before[name])


def test_training_the_middle_point_lowers_the_curve_and_is_reproducible():
    batches = data()
    first, second = fit(net(1), batches), fit(net(2), batches)
    untrained = connect(first, second, batches, CLASSIFICATION, ConnectivitySettings(curve_steps=0))
    trained = connect(first, second, batches, CLASSIFICATION, ConnectivitySettings(curve_steps=200, seed=3))
    again = connect(first, second, batches, CLASSIFICATION, ConnectivitySettings(curve_steps=200, seed=3))
    assert trained.bezier.loss == again.bezier.loss
    # the ends are the models themselves on both paths
    assert trained.bezier.loss[0] == pytest.approx(trained.line.loss[0])
    assert trained.bezier.loss[-1] == pytest.approx(trained.line.loss[-1])
    assert max(trained.bezier.loss[1:-1]) < max(untrained.bezier.loss[1:-1])


def test_models_of_different_architectures_are_refused():
    with pytest.raises(HtsrError, match=r"different architectures: parameter '0.weight' is \(16, 4\) in the first model and \(8, 4\) in the second model"):
        check_same_architecture(net(0), nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    with pytest.raises(HtsrError, match="parameter '2.weight' is in the first model only"):
        connect(net(0), net(0, batchnorm=True), data(), CLASSIFICATION)


def test_batchnorm_statistics_are_recomputed_at_each_point():
    # the ends of the line are model A itself, with its BatchNorm statistics recomputed over the data
    # (a cumulative average), not the exponential averages left by training
    import copy

    batches = data()
    model = fit(net(4, batchnorm=True), batches)
    recomputed = copy.deepcopy(model)
    recomputed[1].reset_running_stats()
    recomputed[1].momentum = None
    recomputed.train()
    with torch.no_grad():
        for x, _ in batches:
            recomputed(x)
    recomputed.eval()
    with torch.no_grad():
        expected = sum(float(nn.functional.cross_entropy(recomputed(x), y)) * len(y) for x, y in batches) / 64
        stored = sum(float(nn.functional.cross_entropy(model(x), y)) * len(y) for x, y in batches) / 64
    assert abs(expected - stored) > 1e-4  # the test can tell the two apart
    result = connect(model, fit(net(5, batchnorm=True), batches), batches, CLASSIFICATION, ConnectivitySettings(curve_steps=0))
    assert result.line.loss[0] == pytest.approx(expected, rel=1e-6)
