"""The library from Python: any nn.Module, a plain loss function and a list or DataLoader of batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from htsr_cli import landscape
from htsr_cli.errors import InvalidSetting


def regression():
    """Least squares on a linear model: the Hessian is 2 X^T X / n exactly, whatever the weights."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(40, 1, generator=generator, dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    return model, x, y


def test_hessian_of_least_squares_from_a_dataloader_and_a_plain_loss():
    model, x, y = regression()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # batches of 16, 16, 8: weighted by size
    hessian = landscape.HessianOperator(model, nn.functional.mse_loss, loader)
    exact = 2 * x.T @ x / 40
    top = landscape.top_eigenvalues(hessian, landscape.HessianSettings(top_k=3, max_iterations=500, tolerance=1e-12))
    assert sorted(top.values, reverse=True) == pytest.approx(torch.linalg.eigvalsh(exact).flip(0).tolist(), rel=1e-6)
    slq = landscape.density(hessian, landscape.HessianSettings(density_steps=3, density_runs=2))
    for nodes in slq.nodes:  # three Lanczos steps on a 3x3 Hessian: its eigenvalues
        assert sorted(nodes) == pytest.approx(torch.linalg.eigvalsh(exact).tolist(), rel=1e-8)


def test_a_one_shot_generator_is_refused():
    model, x, y = regression()
    with pytest.raises(InvalidSetting, match="re-iterable"):
        landscape.HessianOperator(model, nn.functional.mse_loss, ((x, y) for _ in range(2)))


def test_max_batches_cuts_the_stream():
    batches = landscape.Batches([(torch.zeros(2), torch.zeros(2))] * 5, max_batches=2)
    assert len(batches) == 2 and len(list(batches)) == 2


class WithUnusedHead(nn.Module):
    """A model with a parameter its output never uses, and a parameter its loss is linear in."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 2).double()
        self.unused = nn.Parameter(torch.ones(4, dtype=torch.float64))
        self.shift = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x):
        return self.body(x), self.shift


def loss_with_linear_term(outputs, targets):
    logits, shift = outputs
    return nn.functional.cross_entropy(logits, targets) + shift.sum()


def test_unused_and_linear_parameters_have_zero_curvature():
    objective = landscape.Objective(loss=loss_with_linear_term, forward=lambda model, inputs: model(inputs))
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batches = [(x, torch.tensor([0, 1] * 4))]
    model = WithUnusedHead()
    hessian = landscape.HessianOperator(model, objective, batches)
    product = hessian([torch.ones_like(p) for p in hessian.parameters])
    names = [name for name, _ in model.named_parameters()]
    assert torch.equal(product[names.index("unused")], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(product[names.index("shift")], torch.zeros(1, dtype=torch.float64))
    assert product[names.index("body.weight")].abs().sum() > 0
    found = landscape.adaptive_sharpness(model, batches, objective, landscape.SharpnessSettings(ascent_steps=2))
    assert found.sharpness >= 0
