"""Adaptive sharpness against its closed form on quadratic losses; ensemble diversity on known predictions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from htsr_cli.errors import InvalidSetting
from htsr_cli.landscape.objective import CLASSIFICATION, Batches, Objective
from htsr_cli.landscape.sharpness import LINF, SharpnessSettings, adaptive_sharpness, ensemble_diversity


class Quadratic(nn.Module):
    """Outputs 0.5 (w - c)^T A (w - c) for every sample: a loss with its minimum at w = c."""

    def __init__(self, curvature: torch.Tensor, centre: torch.Tensor, at: torch.Tensor):
        super().__init__()
        self.curvature, self.centre = curvature, centre
        self.w = nn.Parameter(at.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.w - self.centre
        return (0.5 * d @ self.curvature @ d).expand(x.shape[0])


MEAN = Objective(loss=lambda outputs, targets: outputs.mean(), name="quadratic")
DATA = Batches([(torch.zeros(4, 1), torch.zeros(4))])


def test_l2_adaptive_sharpness_at_a_minimum_is_half_rho_squared_times_the_top_eigenvalue_of_DAD():
    # S = max_{|g| <= rho} 0.5 (|w| g)^T A (|w| g) = 0.5 rho^2 lambda_max(D A D), D = diag|w|
    generator = torch.Generator().manual_seed(0)
    root = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    curvature = root @ root.T
    centre = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    scaled = torch.diag(centre.abs()) @ curvature @ torch.diag(centre.abs())
    expected = 0.5 * 0.3**2 * float(torch.linalg.eigvalsh(scaled)[-1])
    model = Quadratic(curvature, centre, centre)
    found = adaptive_sharpness(model, DATA, MEAN, SharpnessSettings(rho=0.3, ascent_steps=300, step_size=0.1))
    assert found.loss == pytest.approx(0.0, abs=1e-12)
    assert found.sharpness == pytest.approx(expected, rel=1e-4)


def test_linf_adaptive_sharpness_of_a_diagonal_quadratic_is_the_box_corner():
    # test vector: A = diag(2, 1, 4), w = c = (1, -3, 0.5), rho = 0.1:
    # S = 0.5 * rho^2 * sum a_i w_i^2 = 0.5 * 0.01 * (2 + 9 + 1) = 0.06
    curvature = torch.diag(torch.tensor([2.0, 1.0, 4.0], dtype=torch.float64))
    centre = torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64)
    found = adaptive_sharpness(Quadratic(curvature, centre, centre), DATA, MEAN, SharpnessSettings(rho=0.1, norm=LINF, ascent_steps=30))
    assert found.sharpness == pytest.approx(0.06, rel=1e-9)


def test_sharpness_does_not_change_when_a_layer_is_rescaled():
    # ReLU networks: scaling layer 1 by 4 and layer 2 by 1/4 is the same function; adaptive sharpness
    # scales the perturbation with |w|, so the worst case found along the same random start is the same
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6, bias=False), nn.ReLU(), nn.Linear(6, 2, bias=False)).double()
    rescaled = nn.Sequential(nn.Linear(3, 6, bias=False), nn.ReLU(), nn.Linear(6, 2, bias=False)).double()
    with torch.no_grad():
        rescaled[0].weight.copy_(model[0].weight * 4)
        rescaled[2].weight.copy_(model[2].weight / 4)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(2))
    data = Batches([(x, y)])
    settings = SharpnessSettings(rho=0.05, ascent_steps=10)
    first = adaptive_sharpness(model, data, CLASSIFICATION, settings)
    second = adaptive_sharpness(rescaled, data, CLASSIFICATION, settings)
    assert first.sharpness > 0
    assert second.sharpness == pytest.approx(first.sharpness, rel=1e-6)


def test_sharpness_is_reproducible_with_a_seed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    data = Batches([(x, torch.zeros(16, dtype=torch.long))])
    runs = [adaptive_sharpness(model, data, CLASSIFICATION, SharpnessSettings(ascent_steps=3, seed=s)).sharpness for s in (5, 5, 6)]
    assert runs[0] == runs[1] != runs[2]


class Fixed(nn.Module):
    """Returns the same logits for any input batch of their size."""

    def __init__(self, logits: list[list[float]]):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_diversity_test_vector():
    # two samples, two classes; member 1 predicts p = (0.5, 0.5) and (0.9, 0.1), member 2 (0.5, 0.5) and (0.1, 0.9)
    logit = math.log(9.0)
    first = Fixed([[0.0, 0.0], [logit, 0.0]])
    second = Fixed([[0.0, 0.0], [0.0, logit]])
    targets = torch.tensor([0, 0])
    result = ensemble_diversity([first, second], Batches([(torch.zeros(2, 1), targets)]), CLASSIFICATION)
    # argmax: sample 1 ties (both class 0), sample 2 differs -> 1/2
    assert result.disagreement == pytest.approx(0.5)
    # KL((.9,.1) || (.1,.9)) = .9 ln 9 + .1 ln(1/9) = 0.8 ln 9 on sample 2, 0 on sample 1 -> mean 0.4 ln 9
    assert result.kl == pytest.approx(0.4 * math.log(9.0), rel=1e-12)
    # variance over members: sample 1 zero; sample 2 (0.4^2) per class -> mean over samples 0.08
    assert result.variance == pytest.approx(0.08, rel=1e-12)
    assert result.member_errors == pytest.approx([0.0, 50.0])
    # the ensemble predicts (.5, .5) twice: argmax class 0 for both -> no errors, loss ln 2
    assert result.ensemble_error == pytest.approx(0.0)
    assert result.ensemble_loss == pytest.approx(math.log(2.0), rel=1e-12)


def test_diversity_needs_two_models():
    with pytest.raises(InvalidSetting, match="at least 2"):
        ensemble_diversity([Fixed([[0.0, 1.0]])], DATA, CLASSIFICATION)
