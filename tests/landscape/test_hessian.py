"""Hessian metrics from Hessian-vector products equal the dense Hessian's on models of a few dozen parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from htsr_cli.landscape.hessian import (
    HessianOperator,
    HessianSettings,
    broadened_density,
    density,
    top_eigenvalues,
    trace,
)
from htsr_cli.landscape.objective import CLASSIFICATION, Batches, Objective


def tiny_mlp() -> tuple[nn.Module, list]:
    """4 -> 5 -> 3 with tanh: 43 parameters, float64; 3 batches of 8 samples (24 in all)."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(24, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=generator)
    return model, [(x[i : i + 8], y[i : i + 8]) for i in range(0, 24, 8)]


def dense_hessian(model: nn.Module, batches: list) -> torch.Tensor:
    """The exact Hessian of the mean loss over all samples, by torch.autograd.functional.hessian."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def loss(vector: torch.Tensor) -> torch.Tensor:
        parameters, offset = {}, 0
        for name, shape in zip(names, shapes):
            parameters[name] = vector[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return nn.functional.cross_entropy(torch.func.functional_call(model, parameters, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def test_top_eigenvalues_equal_the_dense_hessians_largest_in_magnitude():
    model, batches = tiny_mlp()
    exact = torch.linalg.eigvalsh(dense_hessian(model, batches))
    by_magnitude = exact[exact.abs().argsort(descending=True)][:3]
    hessian = HessianOperator(model, CLASSIFICATION, Batches(batches))
    found = top_eigenvalues(hessian, HessianSettings(top_k=3, max_iterations=3000, tolerance=1e-12))
    # tolerance 1e-12 on the relative change of the Rayleigh quotient: 1e-6 relative agreement
    assert found.values == pytest.approx(by_magnitude.tolist(), rel=1e-6)


def test_hutchinson_trace_is_within_four_standard_errors_of_the_exact_trace():
    model, batches = tiny_mlp()
    dense = dense_hessian(model, batches)
    hessian = HessianOperator(model, CLASSIFICATION, Batches(batches))
    estimate = trace(hessian, HessianSettings(max_iterations=400, tolerance=0.0))
    assert len(estimate.probes) == 400  # tolerance 0 never stops early
    # Var(v.Hv) for Rademacher v = 2 * sum_{i != j} H_ij^2
    off_diagonal = dense - torch.diag(torch.diag(dense))
    standard_error = float((2 * (off_diagonal**2).sum()) ** 0.5) / 400**0.5
    assert abs(estimate.trace - float(torch.trace(dense))) < 4 * standard_error


class Diagonal(nn.Module):
    """loss = mean over samples of 0.5 * sum_i a_i (w_i - x_i)^2: Hessian diag(a) exactly."""

    def __init__(self, curvatures: torch.Tensor):
        super().__init__()
        self.curvatures = curvatures
        self.w = nn.Parameter(torch.zeros_like(curvatures))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((self.w - x) ** 2 * self.curvatures).sum(-1)


SQUARED = Objective(loss=lambda outputs, targets: outputs.mean(), name="quadratic")


def diagonal_model(curvatures: list[float]) -> tuple[HessianOperator, torch.Tensor]:
    a = torch.tensor(curvatures, dtype=torch.float64)
    data = [(torch.randn(5, len(a), dtype=torch.float64, generator=torch.Generator().manual_seed(1)), torch.zeros(5))]
    return HessianOperator(Diagonal(a), SQUARED, Batches(data)), a


def test_trace_of_a_diagonal_hessian_is_exact_after_one_probe():
    # test vector: H = diag(3, -1, 0.5, 2) -> v.Hv = 4.5 for every Rademacher v
    hessian, _ = diagonal_model([3.0, -1.0, 0.5, 2.0])
    estimate = trace(hessian, HessianSettings(tolerance=0.5))
    assert estimate.probes[0] == pytest.approx(4.5, abs=1e-12)
    assert estimate.trace == pytest.approx(4.5, abs=1e-12)


def test_power_iteration_orders_by_magnitude():
    # test vector: diag(3, -5, 1): power iteration gives -5 first, then 3
    hessian, _ = diagonal_model([3.0, -5.0, 1.0])
    found = top_eigenvalues(hessian, HessianSettings(top_k=2, max_iterations=2000, tolerance=1e-12))
    assert found.values == pytest.approx([-5.0, 3.0], rel=1e-6)


def test_slq_with_full_lanczos_recovers_the_spectrum_and_its_density_integrates_to_one():
    model, batches = tiny_mlp()
    dense = dense_hessian(model, batches)
    exact = torch.linalg.eigvalsh(dense)
    hessian = HessianOperator(model, CLASSIFICATION, Batches(batches))
    settings = HessianSettings(density_steps=hessian.size, density_runs=4, density_bins=4000)
    result = density(hessian, settings)
    for nodes, weights in zip(result.nodes, result.weights):
        assert sum(weights) == pytest.approx(1.0, abs=1e-9)
        # the extreme Ritz values of a full Lanczos run are the extreme eigenvalues
        assert min(nodes) == pytest.approx(float(exact[0]), abs=1e-6)
        assert max(nodes) == pytest.approx(float(exact[-1]), abs=1e-6)
    step = result.grid[1] - result.grid[0]
    grid, values = torch.tensor(result.grid), torch.tensor(result.density)
    assert float(values.sum() * step) == pytest.approx(1.0, abs=1e-9)
    # its first moment is the quadrature mean, an estimate of tr(H)/n (Rademacher: v.Hv/n per run)
    first_moment = float((grid * values).sum() * step)
    quadrature_mean = sum(sum(w * x for w, x in zip(ws, xs)) for ws, xs in zip(result.weights, result.nodes)) / 4
    assert first_moment == pytest.approx(quadrature_mean, abs=1e-3 * float(exact.abs().max()))
    off_diagonal = dense - torch.diag(torch.diag(dense))
    standard_error = float((2 * (off_diagonal**2).sum()) ** 0.5) / hessian.size / 4**0.5
    assert abs(quadrature_mean - float(torch.trace(dense)) / hessian.size) < 4 * standard_error


def test_slq_of_a_diagonal_hessian_has_mean_trace_over_n_exactly():
    # test vector: diag(3, -1, 0.5, 2): every normalised Rademacher v has v.Hv = 4.5 / 4
    hessian, _ = diagonal_model([3.0, -1.0, 0.5, 2.0])
    result = density(hessian, HessianSettings(density_steps=10, density_runs=3))
    for nodes, weights in zip(result.nodes, result.weights):
        assert sum(w * x for w, x in zip(weights, nodes)) == pytest.approx(4.5 / 4, abs=1e-9)
        assert sorted(nodes) == pytest.approx([-1.0, 0.5, 2.0, 3.0], abs=1e-9)


def test_broadening_uses_pyhessians_variance():
    grid, values, variance = broadened_density([[0.0, 1.0]], [[0.5, 0.5]], bins=11)
    assert variance == pytest.approx(1e-5 * 1.02)
    assert grid[0] == pytest.approx(-0.01) and grid[-1] == pytest.approx(1.01)


def test_seeded_runs_repeat_exactly_and_seeds_differ():
    model, batches = tiny_mlp()
    hessian = HessianOperator(model, CLASSIFICATION, Batches(batches))
    first = trace(hessian, HessianSettings(max_iterations=5, tolerance=0.0, seed=3)).probes
    again = trace(hessian, HessianSettings(max_iterations=5, tolerance=0.0, seed=3)).probes
    other = trace(hessian, HessianSettings(max_iterations=5, tolerance=0.0, seed=4)).probes
    assert first == again and first != other


def test_batching_does_not_change_the_product():
    model, batches = tiny_mlp()
    whole = [(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))]
    v = [torch.ones_like(p) for p in model.parameters()]
    split = HessianOperator(model, CLASSIFICATION, Batches(batches))(v)
    joined = HessianOperator(model, CLASSIFICATION, Batches(whole))(v)
    for a, b in zip(split, joined):
        torch.testing.assert_close(a, b)
