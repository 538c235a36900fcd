"""WeightWatcher 0.7.7's random-matrix metrics (algorithms.md, "WeightWatcher's random-matrix metrics").

Pure functions of a layer's ascending ESD (NumPy float64 arrays): the
Marchenko-Pastur fit (`mp_fit`), the comparison with the ESD of the layer's
element-wise shuffled weights (`randomized_metrics`) and the detX condition
(`detx`). Each step follows WeightWatcher's own computation, including its
choices that are not textbook RMT (the ESD rescaled to mean 1, a quarter-circle
fit of the singular values when the matrix is square, a brute-force sigma grid
polished by Nelder-Mead, Jensen-Shannon between the two sorted spectra taken as
vectors), so that the numbers agree with WeightWatcher's to rounding.

The shuffling itself (`shuffled_slices`) is torch, on the solver's device: the
shuffled matrices are solved by the same `Eigensolver` as every other matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# WeightWatcher's kernel density estimate of the ESD: a linear (triangular) kernel
# of bandwidth 0.1 on 1000 points from 0 to lambda_max + 0.5, where points with
# density at most 0.01 are left out of the fit.
KDE_BANDWIDTH = 0.1
KDE_POINTS = 1000
KDE_MARGIN = 0.5
DENSITY_FLOOR = 0.01
# Residual of a sigma whose MP edges are inconsistent with the density's peak.
EDGE_PENALTY = 1000.0
# The sigma grid: 0.05 to 2 times the sigma that puts the MP edge at lambda_max, in steps of 0.01 of it.
SIGMA_GRID = (0.05, 2.0, 0.01)
# SciPy's fmin defaults, which WeightWatcher's brute force search uses to polish its grid minimum.
NM_XATOL = 1e-4
NM_FATOL = 1e-4
NM_MAX_CALLS = 200
NM_FIRST_STEP = 0.05
NM_ZERO_STEP = 0.00025
# Layers with fewer eigenvalues than this (all kernel positions of a conv together) are shuffled 5 times and pooled.
FEW_EVALS = 100
FEW_EVALS_REPLICAS = 5
# Correlation traps listed per layer (the count is not bounded).
MAX_TRAP_EVALS = 10
KDE_CHUNK = 1024  # samples per block of the KDE (bounds its memory to KDE_CHUNK x KDE_POINTS)


@dataclass(frozen=True)
class MPFit:
    """A Marchenko-Pastur fit, in WeightWatcher's terms.

    `sigma_mp` is in the units of the ESD rescaled to mean 1; the bulk edges and
    `spike_edge` (the bulk edge plus its Tracy-Widom allowance) in the ESD's own.
    """

    sigma_mp: float
    bulk_min: float
    bulk_max: float
    spike_edge: float
    num_spikes: int
    mp_softrank: float


@dataclass(frozen=True)
class RandomizedMetrics:
    """A layer's ESD against the ESD of its element-wise shuffled weights."""

    rand_distance: float  # Jensen-Shannon distance between the two sorted spectra
    ww_softrank: float  # max shuffled eigenvalue / max eigenvalue
    ww_maxdist: float  # max eigenvalue - max shuffled eigenvalue
    max_rand_eval: float
    rand_fit: MPFit | None  # the MP fit of the shuffled ESD; None where it fails
    trap_evals: list[float]  # the largest shuffled eigenvalues beyond the fit's spike edge, descending

    @property
    def rand_num_spikes(self) -> int | None:
        """Correlation traps: shuffled eigenvalues beyond the MP edge of the shuffled ESD."""
        return None if self.rand_fit is None else self.rand_fit.num_spikes


def replicas_for(num_evals: int) -> int:
    """How many shuffles WeightWatcher pools for the MP fit of a layer's shuffled ESD (its `num_components`:
    a conv's eigenvalue count over all kernel positions)."""
    return FEW_EVALS_REPLICAS if num_evals < FEW_EVALS else 1


def shuffled_slices(stack: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each [rows, cols] slice of `stack` with its elements permuted at random (a new tensor).

    The permutations are drawn on the CPU from `generator`, so a seed gives the
    same shuffle on every device.
    """
    count, rows, cols = stack.shape
    size = rows * cols
    order = torch.stack([torch.randperm(size, generator=generator) for _ in range(count)]).to(stack.device)
    return torch.gather(stack.reshape(count, size), 1, order).reshape(count, rows, cols)


def _aspect(rows: int, cols: int) -> tuple[float, int]:
    """WeightWatcher's Q = N / M (long side over short side) and M."""
    long_side, short_side = max(rows, cols), min(rows, cols)
    return long_side / short_side, short_side


def linear_kde(samples: np.ndarray, points: np.ndarray, bandwidth: float) -> np.ndarray:
    """Density at `points` of a linear-kernel estimate: mean over samples of max(0, 1 - |x - s| / h) / h."""
    total = np.zeros(points.shape[0])
    for start in range(0, samples.shape[0], KDE_CHUNK):
        distance = np.abs(points[:, None] - samples[None, start : start + KDE_CHUNK])
        total += np.clip(1.0 - distance / bandwidth, 0.0, None).sum(axis=1)
    return total / (samples.shape[0] * bandwidth)


def _mp_density(x: np.ndarray, q: float, sigma: float) -> tuple[np.ndarray, float, float]:
    """Marchenko-Pastur density (0 outside its support) and its edges (a, b)."""
    b = np.power(sigma * (1 + np.sqrt(1 / q)), 2)
    a = np.power(sigma * (1 - np.sqrt(1 / q)), 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.nan_to_num((1 / (2 * np.pi * sigma * sigma * x * (1 / q))) * np.sqrt((b - x) * (x - a)))
    return density, a, b


def _quarter_circle_density(x: np.ndarray, sigma: float) -> np.ndarray:
    """The quarter-circle law of the singular values of a square matrix (0 beyond 2)."""
    with np.errstate(invalid="ignore"):
        return np.nan_to_num((1 / (np.pi * sigma * sigma)) * np.sqrt(4 - x**2))


@dataclass(frozen=True)
class _Density:
    """The kernel density estimate an MP fit compares with: points kept (density above the floor)."""

    x: np.ndarray
    y: np.ndarray
    peak: float  # the first point of largest density
    dropped: int  # points left out: they add zero residuals, as in WeightWatcher's sum

    @classmethod
    def of(cls, samples: np.ndarray) -> "_Density":
        x = np.linspace(0, np.max(samples) + KDE_MARGIN, KDE_POINTS)
        # WeightWatcher goes through log density and back; exp(log(y)) rounds like y to 1 ulp.
        with np.errstate(divide="ignore"):
            y = np.exp(np.log(linear_kde(samples, x, KDE_BANDWIDTH)))
        kept = y > DENSITY_FLOOR
        dropped = int(np.count_nonzero(y < DENSITY_FLOOR))
        x, y = x[kept], y[kept]
        peak = float(x[np.argmax(y)]) if y.size else math.nan
        return cls(x, y, peak, dropped)


def mp_residual(sigma: float, density: _Density, q: float) -> float:
    """Sum of squared differences between the MP (or quarter-circle) law for `sigma` and the density estimate."""
    if q == 1:
        residual = _quarter_circle_density(density.x, sigma) - density.y
    else:
        model, a, b = _mp_density(density.x, q, sigma)
        if density.y.size == 0 or b < density.peak or b > np.max(density.x) or a > density.peak:
            residual = np.zeros(density.y.size) + EDGE_PENALTY
        else:
            residual = model - density.y
    return float(np.sum(np.concatenate((residual, np.zeros(density.dropped))) ** 2))


class _CallLimit(Exception):
    pass


def nelder_mead_1d(function: Callable[[float], float], start: float) -> float:
    """Minimise a function of one variable from `start` as SciPy's `fmin` does with its defaults.

    Simplex of start and 1.05 * start; reflection 1, expansion 2, contraction
    and shrink 1/2; stops when both points are within 1e-4 in x and in f, or
    after 200 calls or iterations.
    """
    calls = 0

    def counted(x: float) -> float:
        nonlocal calls
        if calls >= NM_MAX_CALLS:
            raise _CallLimit
        calls += 1
        return function(x)

    second = (1 + NM_FIRST_STEP) * start if start != 0 else NM_ZERO_STEP
    points = [start, second]
    values = [counted(start), counted(second)]
    if values[1] < values[0]:  # a stable sort of two points
        points.reverse()
        values.reverse()
    iterations = 1
    while calls < NM_MAX_CALLS and iterations < NM_MAX_CALLS:
        best, worst = points
        if abs(worst - best) <= NM_XATOL and abs(values[0] - values[1]) <= NM_FATOL:
            break
        try:
            reflected = 2 * best - worst
            f_reflected = counted(reflected)
            if f_reflected < values[0]:
                expanded = 3 * best - 2 * worst
                f_expanded = counted(expanded)
                points[1], values[1] = (expanded, f_expanded) if f_expanded < f_reflected else (reflected, f_reflected)
            elif f_reflected < values[1]:  # outside contraction
                contracted = 1.5 * best - 0.5 * worst
                f_contracted = counted(contracted)
                if f_contracted <= f_reflected:
                    points[1], values[1] = contracted, f_contracted
                else:
                    points[1] = best + 0.5 * (worst - best)
                    values[1] = counted(points[1])
            else:  # inside contraction
                contracted = 0.5 * best + 0.5 * worst
                f_contracted = counted(contracted)
                if f_contracted < values[1]:
                    points[1], values[1] = contracted, f_contracted
                else:
                    points[1] = best + 0.5 * (worst - best)
                    values[1] = counted(points[1])
            iterations += 1
        except _CallLimit:
            pass
        if values[1] < values[0]:
            points.reverse()
            values.reverse()
    return points[0]


def fit_sigma_mp(scaled: np.ndarray, q: float) -> float:
    """WeightWatcher's sigma of the MP law that best fits an ESD rescaled to mean 1.

    The law is fitted to a kernel density estimate of the eigenvalues (of the
    singular values, against the quarter circle, when Q = 1): the best of a grid
    of sigmas around the one that puts the bulk edge at lambda_max, polished by
    Nelder-Mead.
    """
    reference = math.sqrt(np.max(scaled) / np.square(1 + 1.0 / np.sqrt(q)))
    low, high, step = (factor * reference for factor in SIGMA_GRID)
    grid = np.mgrid[slice(low, high, step)]
    density = _Density.of(np.sqrt(scaled) if q == 1 else scaled)
    residuals = [mp_residual(float(sigma), density, q) for sigma in grid]
    return nelder_mead_1d(lambda sigma: mp_residual(sigma, density, q), float(grid[int(np.argmin(residuals))]))


def mp_fit(evals: np.ndarray, rows: int, cols: int) -> MPFit | None:
    """The MP fit of an ESD of `rows` x `cols` matrices (pooled slices): None where it cannot be made.

    The ESD is rescaled to mean 1 (WeightWatcher's W_scale^2 = n / sum(evals));
    eigenvalues beyond the bulk edge plus sqrt(TW), TW = Q^(-1/2) b^(2/3) M^(-2/3),
    are spikes; mp_softrank is the bulk edge over lambda_max.
    """
    total = float(np.sum(evals))
    if evals.size < 2 or not math.isfinite(total) or total <= 0:
        return None
    q, short_side = _aspect(rows, cols)
    w_scale = np.sqrt(evals.shape[0]) / np.sqrt(total)
    scaled = (w_scale * w_scale) * evals
    sigma = fit_sigma_mp(scaled, q)
    bulk_max = (sigma * (1 + 1 / np.sqrt(q))) ** 2
    bulk_min = (sigma * (1 - 1 / np.sqrt(q))) ** 2
    tracy_widom = 1 / np.sqrt(q) * np.power(bulk_max, 2 / 3) * np.power(short_side, -2 / 3)
    edge = bulk_max + np.sqrt(tracy_widom)
    square = w_scale * w_scale
    return MPFit(
        sigma_mp=float(sigma),
        bulk_min=float(bulk_min / square),
        bulk_max=float(bulk_max / square),
        spike_edge=float(edge / square),
        num_spikes=int(np.count_nonzero(scaled > edge)),
        mp_softrank=float(bulk_max / np.max(scaled)),
    )


def _relative_entropy(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of two non-negative vectors, each normalised to sum 1 (0 log 0 = 0)."""
    p = p / np.sum(p)
    q = q / np.sum(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return float(np.sum(terms))


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """sqrt of the Jensen-Shannon divergence of two equal-length non-negative vectors taken as distributions.

    WeightWatcher applies it to the two sorted spectra themselves: element i of
    each is a probability mass, not a histogram bin.
    """
    m = (p + q) / 2
    return math.sqrt((_relative_entropy(p, m) + _relative_entropy(q, m)) / 2)


def randomized_metrics(evals: np.ndarray, shuffles: list[np.ndarray], rows: int, cols: int) -> RandomizedMetrics:
    """Compare an ESD with the ESDs of `shuffles` (each the same length, ascending).

    The distance, softrank and maxdist use the first shuffle; the MP fit of the
    shuffled ESD (and its spikes, the correlation traps) pools all of them, as
    WeightWatcher pools 5 shuffles of small matrices.
    """
    first = shuffles[0]
    pooled = np.sort(np.concatenate(shuffles))
    fit = mp_fit(pooled, rows, cols)
    traps = [] if fit is None else [float(value) for value in pooled[pooled > fit.spike_edge][::-1][:MAX_TRAP_EVALS]]
    return RandomizedMetrics(
        rand_distance=jensen_shannon_distance(evals, first),
        ww_softrank=float(np.max(first) / np.max(evals)),
        ww_maxdist=float(np.max(evals) - np.max(first)),
        max_rand_eval=float(np.max(pooled)),
        rand_fit=fit,
        trap_evals=traps,
    )


def detx(evals: np.ndarray) -> tuple[int, float]:
    """WeightWatcher's detX condition: (detX_num, detX_val) of an ascending ESD.

    With the ESD rescaled to mean 1, detX_num is the smallest tail (largest
    eigenvalues) whose product falls below 1, and detX_val the smallest
    eigenvalue of that tail, in the ESD's own units. WeightWatcher multiplies the
    tail out; this sums logarithms, which cannot overflow. Where no tail short of
    the whole ESD qualifies, detX_num is n and detX_val the second eigenvalue,
    as in WeightWatcher; fewer than two eigenvalues or a constant ESD give (0, evals[0]).
    """
    n = evals.shape[0]
    if n < 2 or not evals[0] < evals[-1]:
        return 0, float(evals[0]) if n else math.nan
    w_scale = np.sqrt(n) / np.sqrt(np.sum(evals))
    square = w_scale * w_scale
    scaled = square * evals
    with np.errstate(divide="ignore"):
        tail_logs = np.cumsum(np.log(scaled[::-1]))[: n - 1]  # log products of the top 1 .. n-1
    below = np.flatnonzero(tail_logs < 0)
    if below.size:
        count = int(below[0]) + 1
        index = n - count
    else:
        count, index = n, 1
    return count, float(scaled[index] / square)


def layer_metrics(
    evals: np.ndarray,
    rows: int,
    cols: int,
    *,
    mp: bool,
    shuffles: list[np.ndarray] | None,
    with_detx: bool,
    xmin: float | None,
    tail_size: int | None,
) -> dict[str, float | int | list[float] | None]:
    """A layer's report fields of the passes asked for (`LayerResult` names), from its ascending ESD.

    `shuffles` (for `--randomize`) are the ESDs of the layer's shuffled weights;
    `xmin` and `tail_size` of alpha's fit, where there is one, place detX beside it.
    """
    fields: dict[str, float | int | list[float] | None] = {}
    if mp:
        fit = mp_fit(evals, rows, cols)
        fields.update(
            sigma_mp=None if fit is None else fit.sigma_mp,
            bulk_min=None if fit is None else fit.bulk_min,
            bulk_max=None if fit is None else fit.bulk_max,
            num_spikes=None if fit is None else fit.num_spikes,
            mp_softrank=None if fit is None else fit.mp_softrank,
        )
    if shuffles is not None:
        randomized = randomized_metrics(evals, shuffles, rows, cols)
        fit = randomized.rand_fit
        fields.update(
            rand_distance=randomized.rand_distance,
            ww_softrank=randomized.ww_softrank,
            ww_maxdist=randomized.ww_maxdist,
            max_rand_eval=randomized.max_rand_eval,
            rand_num_spikes=randomized.rand_num_spikes,
            rand_sigma_mp=None if fit is None else fit.sigma_mp,
            rand_bulk_max=None if fit is None else fit.bulk_max,
            trap_evals=randomized.trap_evals,
        )
    if with_detx:
        count, value = detx(evals)
        fields.update(
            detx_num=count,
            detx_val=value,
            detx_gap=None if tail_size is None else count - tail_size,
            detx_xmin_distance=math.log10(xmin / value) if xmin is not None and value > 0 else None,
        )
    return fields
