"""The Hessian of the training loss with respect to the parameters, as PyHessian measures it
(Yao et al. 2020, github.com/amirgholami/PyHessian), from Hessian-vector products alone.

    Hv = sum_b n_b * d/dw (g_b . v) / sum_b n_b     (g_b: gradient of batch b's mean loss, n_b its size)

one double-backward pass per batch, so the Hessian (P x P) is never formed and the data streams.
The model runs in eval mode (BatchNorm uses its running statistics, dropout is off), as in PyHessian.

- top_eigenvalues: power iteration with deflation. Each eigenvalue starts from a random normal
  vector, projected off the eigenvectors found so far at every step; the Rayleigh quotient v.Hv is
  the estimate, and the iteration stops when it changes by less than `tolerance` relative to the
  previous estimate (|l_k - l_{k-1}| / (|l_{k-1}| + 1e-6) < tol) or after `max_iterations`.
  Power iteration finds the eigenvalues of largest MAGNITUDE, in that order.
- trace: Hutchinson's estimator with Rademacher probes, tr(H) = E[v.Hv]; it stops when the running
  mean changes by less than `tolerance` relative to the previous mean, or after `max_iterations`.
- density: stochastic Lanczos quadrature (SLQ): `runs` Lanczos runs of `steps` steps from
  normalised Rademacher vectors, with full reorthogonalisation; the eigenvalues of each tridiagonal
  matrix are the nodes and the squared first components of its eigenvectors the weights; the
  density is the weight-averaged sum of Gaussians of variance 1e-5 * max(1, range), as
  PyHessian's density_plot.py broadens it, normalised to integrate to 1 on the grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from htsr_cli.errors import InvalidSetting
from htsr_cli.landscape.objective import (
    Batch,
    Batches,
    LossFunction,
    Objective,
    ProgressCallback,
    as_batches,
    as_objective,
    trainable_parameters,
)

Vector = list[Tensor]  # one tensor per parameter


def dot(a: Vector, b: Vector) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def add(a: Vector, b: Vector, scale: float = 1.0) -> Vector:
    """a + scale * b"""
    return [x + scale * y for x, y in zip(a, b)]


def normalized(v: Vector) -> Vector:
    norm = dot(v, v) ** 0.5
    return [x / (norm + 1e-12) for x in v]  # a zero vector stays zero instead of becoming NaN


def orthogonalized(v: Vector, basis: Sequence[Vector]) -> Vector:
    """v with its components along the (orthonormal) `basis` removed, then normalised."""
    for u in basis:
        v = add(v, u, -dot(v, u))
    return normalized(v)


def rademacher(parameters: Vector, generator: torch.Generator) -> Vector:
    return [
        (torch.randint(0, 2, p.shape, generator=generator, dtype=torch.int8).to(p.device, p.dtype) * 2 - 1)
        for p in parameters
    ]


def gaussian(parameters: Vector, generator: torch.Generator) -> Vector:
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in parameters]


class HessianOperator:
    """v -> Hv of the mean loss over `batches`, for `model`'s trainable parameters."""

    def __init__(self, model: nn.Module, loss: Objective | LossFunction, batches: Iterable[Batch] | Batches):
        self.model, self.objective, self.batches = model.eval(), as_objective(loss), as_batches(batches)
        self.parameters: Vector = list(trainable_parameters(model).values())
        if not self.parameters:
            raise InvalidSetting("model", type(model).__name__, "has no trainable parameters")
        self.size = sum(p.numel() for p in self.parameters)
        self.products = 0  # Hessian-vector products computed, for progress and the record

    def __call__(self, v: Vector) -> Vector:
        total = [torch.zeros_like(p) for p in self.parameters]
        samples = 0
        for inputs, targets in self.batches:
            loss = self.objective.loss(self.objective.forward(self.model, inputs), targets)
            # allow_unused: a parameter the loss never reaches (an unused head) has a zero row and column
            gradients = torch.autograd.grad(loss, self.parameters, create_graph=True, allow_unused=True)
            curved = [(g, u) for g, u in zip(gradients, v) if g is not None and g.requires_grad]
            products = (
                torch.autograd.grad([g for g, _ in curved], self.parameters, grad_outputs=[u for _, u in curved], allow_unused=True)
                if curved
                else [None] * len(self.parameters)
            )
            count = self.objective.count(targets)
            total = [t if hv is None else t + count * hv.detach() for t, hv in zip(total, products)]
            samples += count
        if samples == 0:
            raise InvalidSetting("batches", "empty", "the data holds no batch")
        self.products += 1
        return [t / samples for t in total]


@dataclass(frozen=True)
class HessianSettings:
    top_k: int = 1
    max_iterations: int = 100  # per eigenvalue, per trace, as PyHessian's maxIter
    tolerance: float = 1e-3  # relative change that stops power iteration and Hutchinson (PyHessian's tol)
    density_steps: int = 100  # Lanczos steps per SLQ run (PyHessian's iter)
    density_runs: int = 1  # SLQ runs (PyHessian's n_v)
    density_bins: int = 1000  # grid points of the broadened density
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_k", "max_iterations", "density_steps", "density_runs"):
            if getattr(self, name) < 1:
                raise InvalidSetting(name, getattr(self, name), "must be at least 1")
        if not 0 <= self.tolerance < 1:
            raise InvalidSetting("tolerance", self.tolerance, "must be in [0, 1)")
        if self.density_bins < 2:
            raise InvalidSetting("density_bins", self.density_bins, "must be at least 2")


@dataclass(frozen=True)
class Eigenpairs:
    values: list[float]  # by decreasing magnitude
    vectors: list[Vector]
    iterations: list[int]  # power iterations each eigenvalue took


def top_eigenvalues(
    hessian: HessianOperator, settings: HessianSettings, progress: ProgressCallback | None = None
) -> Eigenpairs:
    """The `top_k` Hessian eigenvalues of largest magnitude (power iteration with deflation)."""
    if settings.top_k > hessian.size:
        raise InvalidSetting("top_k", settings.top_k, f"the model has only {hessian.size} parameters")
    generator = torch.Generator().manual_seed(settings.seed)
    values: list[float] = []
    vectors: list[Vector] = []
    iterations: list[int] = []
    for index in range(settings.top_k):
        v = normalized(gaussian(hessian.parameters, generator))
        estimate: float | None = None
        steps = 0
        for steps in range(1, settings.max_iterations + 1):
            v = orthogonalized(v, vectors)
            hv = hessian(v)
            current = dot(hv, v)
            v = normalized(hv)
            if progress is not None:
                progress(index, settings.top_k, f"eigenvalue {index + 1}, iteration {steps}")
            converged = estimate is not None and abs(current - estimate) / (abs(estimate) + 1e-6) < settings.tolerance
            estimate = current
            if converged:
                break
        values.append(float(estimate))  # type: ignore[arg-type]
        vectors.append(orthogonalized(v, vectors))
        iterations.append(steps)
    return Eigenpairs(values, vectors, iterations)


@dataclass(frozen=True)
class TraceEstimate:
    trace: float  # the mean of the probes
    probes: list[float]  # v.Hv of each Rademacher probe


def trace(hessian: HessianOperator, settings: HessianSettings, progress: ProgressCallback | None = None) -> TraceEstimate:
    """Hutchinson's estimate of tr(H) with Rademacher probes, stopped at `tolerance` relative change."""
    generator = torch.Generator().manual_seed(settings.seed + 1)  # not the eigenvalue probes' stream
    probes: list[float] = []
    mean = 0.0
    for iteration in range(settings.max_iterations):
        v = rademacher(hessian.parameters, generator)
        probes.append(dot(hessian(v), v))
        if progress is not None:
            progress(iteration + 1, settings.max_iterations, f"trace probe {iteration + 1}")
        new_mean = sum(probes) / len(probes)
        converged = abs(new_mean - mean) / (abs(mean) + 1e-6) < settings.tolerance
        mean = new_mean
        if converged:
            break
    return TraceEstimate(mean, probes)


@dataclass(frozen=True)
class Density:
    nodes: list[list[float]]  # per SLQ run: Ritz values (eigenvalues of the Lanczos tridiagonal)
    weights: list[list[float]]  # per run: squared first components of their eigenvectors (sum to 1)
    grid: list[float]
    density: list[float]  # Gaussian-broadened, integrates to 1 on the grid (trapezoid-free sum * step)
    variance: float  # of each Gaussian


def lanczos_quadrature(hessian: HessianOperator, start: Vector, steps: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights of the Gauss quadrature of v^T f(H) v for a unit vector v (`steps` Lanczos steps,
    full reorthogonalisation; fewer when the Krylov space is exhausted)."""
    basis = [normalized(start)]
    alphas: list[float] = []
    betas: list[float] = []
    for step in range(min(steps, hessian.size)):
        w = hessian(basis[-1])
        alphas.append(dot(w, basis[-1]))
        if step == min(steps, hessian.size) - 1:
            break
        w = add(w, basis[-1], -alphas[-1])
        if len(basis) > 1:
            w = add(w, basis[-2], -betas[-1])
        for u in basis:  # full reorthogonalisation: floating point loses orthogonality fast
            w = add(w, u, -dot(w, u))
        beta = dot(w, w) ** 0.5
        if beta < 1e-10 * max(1.0, max(abs(a) for a in alphas)):
            break  # an invariant subspace: the quadrature is exact with these nodes
        betas.append(beta)
        basis.append([x / beta for x in w])
    size = len(alphas)
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if size > 1:
        off = torch.tensor(betas[: size - 1], dtype=torch.float64)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    nodes, eigenvectors = torch.linalg.eigh(tridiagonal)
    return nodes, eigenvectors[0] ** 2


def broadened_density(
    nodes: Sequence[Sequence[float]], weights: Sequence[Sequence[float]], bins: int
) -> tuple[list[float], list[float], float]:
    """PyHessian's density_generate: a grid from the mean smallest to the mean largest node (+-0.01),
    Gaussians of variance 1e-5 * max(1, grid range) at the nodes, averaged over runs, normalised."""
    highest = sum(max(run) for run in nodes) / len(nodes) + 0.01
    lowest = sum(min(run) for run in nodes) / len(nodes) - 0.01
    grid = torch.linspace(lowest, highest, bins, dtype=torch.float64)
    variance = 1e-5 * max(1.0, highest - lowest)
    density = torch.zeros(bins, dtype=torch.float64)
    for run_nodes, run_weights in zip(nodes, weights):
        at = torch.tensor(run_nodes, dtype=torch.float64)
        weight = torch.tensor(run_weights, dtype=torch.float64)
        kernel = torch.exp(-((grid[:, None] - at[None, :]) ** 2) / (2 * variance)) / (2 * torch.pi * variance) ** 0.5
        density += kernel @ weight
    density /= len(nodes)
    density /= density.sum() * (grid[1] - grid[0])
    return grid.tolist(), density.tolist(), variance


def density(hessian: HessianOperator, settings: HessianSettings, progress: ProgressCallback | None = None) -> Density:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature (PyHessian's density(iter, n_v))."""
    generator = torch.Generator().manual_seed(settings.seed + 2)
    nodes: list[list[float]] = []
    weights: list[list[float]] = []
    for run in range(settings.density_runs):
        if progress is not None:
            progress(run, settings.density_runs, f"SLQ run {run + 1}")
        run_nodes, run_weights = lanczos_quadrature(hessian, rademacher(hessian.parameters, generator), settings.density_steps)
        nodes.append(run_nodes.tolist())
        weights.append(run_weights.tolist())
    grid, values, variance = broadened_density(nodes, weights, settings.density_bins)
    return Density(nodes, weights, grid, values, variance)
