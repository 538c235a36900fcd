"""SharpBalance's pieces against hand computations (the SAM step on a quadratic, per-sample
sharpness against a loop, the subsets on a worked example) and the trainer on tiny digits MLPs:
seeded and reproducible, each method training the samples it should."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from htsr_cli.errors import InvalidSetting
from htsr_cli.training import SharpBalance, SharpBalanceSettings, per_sample_sharpness, sam_gradient, sam_subsets


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sam_gradient_on_a_quadratic_equals_the_hand_computation():
    # L(w) = 0.5 * sum(a * w^2): g = a * w, eps = rho * g / |g|, SAM's gradient = a * (w + eps)
    a = torch.tensor([2.0, 1.0, 4.0], dtype=torch.float64)
    w = torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64, requires_grad=True)
    rho = 0.1
    gradient = sam_gradient([w], lambda: 0.5 * (a * w**2).sum(), rho)
    g = a * torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64)  # (2, -3, 2), |g| = sqrt(17)
    expected = a * (torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64) + rho * g / 17**0.5)
    assert torch.allclose(gradient[0], expected, atol=1e-14)
    assert torch.equal(w.detach(), torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64))  # moved back


def test_per_sample_sharpness_is_each_sample_squared_gradient_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    scores = per_sample_sharpness(model, x, y, batch_size=3)
    for i in range(7):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        assert float(scores[i]) == pytest.approx(sum(float((p.grad**2).sum()) for p in model.parameters()), rel=1e-10)


def test_sam_subsets_on_a_worked_example():
    # 10 samples, 3 members, fraction 0.2: each member picks its 2 lowest scores.
    scores = [
        torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),  # picks 0, 1
        torch.tensor([9.0, 0, 8, 1, 7, 6, 5, 4, 3, 2]),  # picks 1, 3
        torch.tensor([5.0, 6, 7, 8, 9, 0, 1, 2, 3, 4]),  # picks 5, 6
    ]
    masks = sam_subsets(scores, 0.2)
    # unpicked: 2, 4, 7, 8, 9 -> member 0 gets 2, 8; member 1 gets 4, 9; member 2 gets 7
    chosen = [set(torch.nonzero(mask).flatten().tolist()) for mask in masks]
    assert chosen[0] == {1, 3, 5, 6} | {2, 8}
    assert chosen[1] == {0, 1, 5, 6} | {4, 9}
    assert chosen[2] == {0, 1, 3} | {7}


def digits(samples: int = 300):
    pytest.importorskip("sklearn")
    from tests.landscape.digits import digits_arrays

    features, labels = digits_arrays()
    return torch.from_numpy(features[:samples]), torch.from_numpy(labels[:samples])


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.mark.parametrize("method", ["sharpbalance", "sam", "deep-ensemble"])
def test_training_is_seeded_and_learns(method):
    x, y = digits()
    settings = SharpBalanceSettings(members=3, epochs=4, batch_size=32, learning_rate=0.05, method=method)
    first = SharpBalance(mlp, settings).fit(x, y)
    second = SharpBalance(mlp, settings).fit(x, y)
    for a, b in zip(first, second):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(first[0][0].weight, first[1][0].weight)  # members start from their own seeds
    with torch.no_grad():
        accuracy = [float((m(x).argmax(-1) == y).float().mean()) for m in first]
    assert min(accuracy) > 0.5  # a few epochs on 300 digits: well above chance (0.1)


def test_sharpbalance_splits_after_the_warmup_by_the_warmed_up_members_sharpness():
    x, y = digits(200)
    trainer = SharpBalance(mlp, SharpBalanceSettings(members=3, epochs=2, warmup_epochs=1, batch_size=50, fraction=0.2))
    trainer.fit(x, y)
    # the warm-up is a SAM epoch on every sample: the same members as a one-epoch SAM ensemble
    warmed = SharpBalance(mlp, SharpBalanceSettings(method="sam", members=3, epochs=1, batch_size=50)).fit(x, y)
    expected = sam_subsets([per_sample_sharpness(model, x, y) for model in warmed], 0.2)
    assert trainer.sam_masks is not None
    assert all(torch.equal(mask, want) for mask, want in zip(trainer.sam_masks, expected))
    assert all(80 <= int(mask.sum()) < 200 for mask in trainer.sam_masks)  # the others' 2 x 40 picks at least
    assert SharpBalance(mlp, SharpBalanceSettings(method="sam", epochs=1, batch_size=50)).sam_masks is None


def test_a_sharpbalance_run_that_never_splits_is_a_sam_run():
    # With the SAM set everything, a SharpBalance epoch is a SAM epoch: the split is the only difference.
    x, y = digits(100)
    sam = SharpBalance(mlp, SharpBalanceSettings(method="sam", members=2, epochs=2, batch_size=25)).fit(x, y)
    warm_only = SharpBalance(mlp, SharpBalanceSettings(method="sharpbalance", members=2, epochs=2, warmup_epochs=2, batch_size=25)).fit(x, y)
    for a, b in zip(sam, warm_only):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize(
    ("field", "value"),
    [("method", "bagging"), ("members", 1), ("fraction", 1.0), ("rho", 0.0), ("warmup_epochs", 30), ("epochs", 0)],
)
def test_bad_settings_are_named(field, value):
    with pytest.raises(InvalidSetting, match=field):
        SharpBalanceSettings(**{field: value})
