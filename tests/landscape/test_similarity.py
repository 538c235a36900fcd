"""CKA: the direct formulas, their equalities and invariances, and minibatch CKA against them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.landscape.objective import Batches
from htsr_cli.landscape.similarity import RBF, MinibatchCKA, SimilaritySettings, cka, model_cka, unbiased_cka


def arrays(n: int = 40, p: int = 6, q: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=generator, dtype=torch.float64)
    y = x[:, :q] @ torch.randn(q, q, generator=generator, dtype=torch.float64) + 0.5 * torch.randn(n, q, generator=generator, dtype=torch.float64)
    return x, y


def feature_space_linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F), written out independently of the kernels."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


def test_linear_cka_test_vector():
    # x = [1, 2, 3, 4], y = [1, 0, 0, 1] (one feature each): centred x = [-1.5, -.5, .5, 1.5],
    # centred y = [.5, -.5, -.5, .5]; (y.x)^2 / (|x|^2 |y|^2) = 0^2 / ... = 0
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    assert cka(x, torch.tensor([[1.0], [0.0], [0.0], [1.0]])) == pytest.approx(0.0, abs=1e-12)
    # y = 2x + 1: perfectly similar
    assert cka(x, 2 * x + 1) == pytest.approx(1.0, abs=1e-12)
    # y = [1, 1, 2, 2]: centred [-.5, -.5, .5, .5]; (y.x)^2 = 2^2 = 4; |x|^2 = 5, |y|^2 = 1 -> 0.8
    assert cka(x, torch.tensor([[1.0], [1.0], [2.0], [2.0]])) == pytest.approx(0.8, abs=1e-12)


def test_linear_cka_is_the_feature_space_formula_and_invariant_to_rotation_and_scale():
    x, y = arrays()
    assert cka(x, y) == pytest.approx(feature_space_linear_cka(x, y), rel=1e-12)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert cka(x, 3.0 * y @ rotation) == pytest.approx(cka(x, y), rel=1e-10)
    assert cka(x, x) == pytest.approx(1.0, rel=1e-12)


def test_rbf_cka_is_one_for_equal_representations_and_below_for_unrelated():
    x, _ = arrays()
    noise = torch.randn(40, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert cka(x, x, RBF) == pytest.approx(1.0, rel=1e-12)
    assert cka(x, noise, RBF) < 0.5


def test_minibatch_cka_with_one_batch_is_the_unbiased_cka_of_the_data():
    x, y = arrays()
    accumulator = MinibatchCKA()
    accumulator.update(x, y)
    assert accumulator.value == pytest.approx(unbiased_cka(x, y), rel=1e-12)


def test_minibatch_cka_over_batches_is_close_to_the_whole_datas():
    x, y = arrays(n=2000)
    accumulator = MinibatchCKA()
    for start in range(0, 2000, 200):
        accumulator.update(x[start : start + 200], y[start : start + 200])
    assert accumulator.value == pytest.approx(cka(x, y), abs=0.02)


def test_batches_smaller_than_four_are_refused():
    with pytest.raises(InvalidSetting, match="at least 4"):
        MinibatchCKA().update(torch.ones(3, 2), torch.ones(3, 2))


def test_model_cka_of_a_model_with_itself_is_one_and_refuses_mismatched_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(2))
    batches = Batches([(x[i : i + 8], torch.zeros(8, dtype=torch.long)) for i in range(0, 32, 8)])
    assert model_cka(model, model, batches) == pytest.approx(1.0, rel=1e-9)
    assert model_cka(model, model, batches, SimilaritySettings(kernel=RBF)) == pytest.approx(1.0, rel=1e-9)
    with pytest.raises(HtsrError, match="representations"):
        model_cka(model, Doubling(), batches)


class Doubling(nn.Module):
    """Two rows per sample: not comparable with a model giving one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x])
