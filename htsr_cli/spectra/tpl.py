"""WeightWatcher 0.7.7's truncated power-law fit (fit="TPL" and "E_TPL").

The density on [xmin, inf) is p(x) = C x^-alpha e^(-Lambda x), with
C = Lambda^(1 - alpha) / Gamma(1 - alpha, Lambda xmin) (the upper incomplete
gamma function) and CDF(x) = 1 - Gamma(1 - alpha, Lambda x) / Gamma(1 - alpha, Lambda xmin).
WeightWatcher hands the fit to the `powerlaw` package (2.0.0 in its venv), which:

- takes the eigenvalues above 1e-5, sorted; the xmin candidates are the distinct
  values in a range, less the largest of them: for "TPL" every value below the
  maximum, for "E_TPL" the values in [log10(0.95 peak), 1.5 peak) where peak is
  10^(left edge of the fullest of 100 bins of log10 x) (the log10 is as published);
- fits (alpha, Lambda) at each candidate by maximum likelihood: scipy's bounded
  Nelder-Mead (alpha in [0, 3], Lambda >= 0, tol 1e-4 on both the simplex and the
  values, at most 400 evaluations) from alpha0 = 1 + n / sum ln(x / xmin) and
  Lambda0 = 1 / mean(tail); a fit is valid when 0 < alpha < 3 and Lambda > 0, the
  optimiser succeeded, and no parameter is within 0.01 of its range's ends;
- scores each fit by the KS distance D between the fitted CDF and the empirical
  one (the whole spectrum's CDF, renormalised from xmin up);
- keeps the valid candidate with the smallest D (the smallest D of all when none
  is valid), and refits there: alpha and Lambda are WeightWatcher's.

Every step is reproduced in its order of floating-point operations, with the same
incomplete gamma function (mpmath's), so the numbers match WeightWatcher's to the
last bit in practice; see algorithms.md for the tolerance the tests use and why.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MIN_EIGENVALUE = 1e-5  # WeightWatcher's EVALS_THRESH: smaller eigenvalues are dropped first
ALPHA_RANGE = (0.0, 3.0)  # powerlaw's Truncated_Power_Law parameter ranges (open at both ends)
LAMBDA_MIN = 0.0
NEAR_BOUNDARY = 1e-2  # a fitted parameter this close to its range's end flags the fit as invalid
TOLERANCE = 1e-4  # the optimiser's xatol and fatol (powerlaw passes tol=1e-4)
MAX_EVALUATIONS = 400  # scipy's default for two parameters: 200 per parameter, calls and iterations alike
TINY = 10.0 ** sys.float_info.min_10_exp  # powerlaw's likelihood for out-of-range parameters, 1e-307
PEAK_BINS = 100
# Nelder-Mead's coefficients (scipy, not adaptive) and its first simplex's step.
REFLECT, EXPAND, CONTRACT, SHRINK = 1.0, 2.0, 0.5, 0.5
SIMPLEX_STEP, SIMPLEX_ZERO_STEP = 0.05, 0.00025


@dataclass(frozen=True)
class TruncatedPowerLawFit:
    alpha: float  # may be <= 1: the exponential factor keeps the density normalisable
    lambda_: float  # WeightWatcher's `Lambda`, the exponential rate
    xmin: float
    ks_distance: float | None  # None when it is not a number
    tail_size: int  # eigenvalues >= xmin
    valid: bool  # the chosen fit passed powerlaw's checks (False: none did, the smallest D was kept)


def _gammainc_upper(order: float, start: float) -> float:
    """Gamma(order, start) = integral from start to infinity of t^(order-1) e^-t dt, any real order."""
    from mpmath import gammainc  # ships with torch (through sympy); imported only when a TPL is fitted

    return float(gammainc(order, start))


class _Distribution:
    """One candidate: a tail (sorted, x >= xmin) and its current (alpha, Lambda)."""

    def __init__(self, tail: np.ndarray, xmin: np.float64) -> None:
        self.tail = tail
        self.xmin = xmin
        self.alpha = 1 + tail.size / np.sum(np.log(tail / xmin))
        self.lambda_ = 1 / np.mean(tail)
        self.valid = False

    def in_range(self) -> bool:
        return bool(ALPHA_RANGE[0] < self.alpha < ALPHA_RANGE[1] and self.lambda_ > LAMBDA_MIN)

    def negative_log_likelihood(self, parameters: np.ndarray) -> float:
        self.alpha, self.lambda_ = parameters[0], parameters[1]
        if not self.in_range():
            likelihoods = np.tile(TINY, self.tail.size)
        else:
            shape = self.tail ** (-self.alpha) * np.exp(-self.lambda_ * self.tail)
            norm = self.lambda_ ** (1 - self.alpha) / np.float64(_gammainc_upper(1 - self.alpha, self.lambda_ * self.xmin))
            likelihoods = (shape * norm).astype(np.float64)
            likelihoods[likelihoods == 0] = TINY
        return float(-np.sum(np.log(likelihoods)))

    def _cdf_base(self, x: np.ndarray | np.float64) -> np.ndarray:
        order = 1 - self.alpha
        upper = np.vectorize(lambda start: _gammainc_upper(order, start), otypes=[np.float64])
        return 1 - upper(self.lambda_ * x) / self.lambda_ ** (1 - self.alpha)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        if not self.in_range():
            return np.tile(TINY, x.size)
        at_xmin = self._cdf_base(self.xmin)
        if at_xmin == 1:
            return np.ones(x.size)
        return (self._cdf_base(x) - at_xmin) / (1 - at_xmin)


def nelder_mead(objective: Callable[[np.ndarray], float], start: np.ndarray,
                lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, bool]:
    """scipy 1.17's bounded Nelder-Mead (xatol = fatol = TOLERANCE): (best point, converged).

    Points leaving the box are clipped onto it; the first simplex steps 5% from
    the start along each axis and is reflected back inside where it crosses the
    upper bound. At most MAX_EVALUATIONS evaluations and iterations.
    """
    calls = 0

    class _Exhausted(Exception):
        pass

    def evaluate(point: np.ndarray) -> float:
        nonlocal calls
        if calls >= MAX_EVALUATIONS:
            raise _Exhausted
        calls += 1
        return objective(np.copy(point))

    size = start.size
    x0 = np.clip(start, lower, upper)
    simplex = np.empty((size + 1, size), dtype=x0.dtype)
    simplex[0] = x0
    for k in range(size):
        vertex = np.array(x0, copy=True)
        vertex[k] = (1 + SIMPLEX_STEP) * vertex[k] if vertex[k] != 0 else SIMPLEX_ZERO_STEP
        simplex[k + 1] = vertex
    simplex = np.clip(np.where(simplex > upper, 2 * upper - simplex, simplex), lower, upper)
    values = np.full((size + 1,), np.inf, dtype=float)

    def order() -> None:
        nonlocal simplex, values
        ranks = np.argsort(values, kind="stable")  # numpy sorts 3 values by insertion: stable, NaN last
        simplex, values = np.take(simplex, ranks, 0), np.take(values, ranks, 0)

    try:
        for k in range(size + 1):
            values[k] = evaluate(simplex[k])
    except _Exhausted:
        pass
    order()
    iterations = 1
    while calls < MAX_EVALUATIONS and iterations < MAX_EVALUATIONS:
        try:
            if (np.max(np.ravel(np.abs(simplex[1:] - simplex[0]))) <= TOLERANCE
                    and np.max(np.abs(values[0] - values[1:])) <= TOLERANCE):
                break
            centroid = np.add.reduce(simplex[:-1], 0) / size
            worst = simplex[-1]
            reflected = np.clip((1 + REFLECT) * centroid - REFLECT * worst, lower, upper)
            f_reflected = evaluate(reflected)
            shrink = False
            if f_reflected < values[0]:
                expanded = np.clip((1 + REFLECT * EXPAND) * centroid - REFLECT * EXPAND * worst, lower, upper)
                f_expanded = evaluate(expanded)
                if f_expanded < f_reflected:
                    simplex[-1], values[-1] = expanded, f_expanded
                else:
                    simplex[-1], values[-1] = reflected, f_reflected
            elif f_reflected < values[-2]:
                simplex[-1], values[-1] = reflected, f_reflected
            elif f_reflected < values[-1]:
                outside = np.clip((1 + CONTRACT * REFLECT) * centroid - CONTRACT * REFLECT * worst, lower, upper)
                f_outside = evaluate(outside)
                if f_outside <= f_reflected:
                    simplex[-1], values[-1] = outside, f_outside
                else:
                    shrink = True
            else:
                inside = np.clip((1 - CONTRACT) * centroid + CONTRACT * worst, lower, upper)
                f_inside = evaluate(inside)
                if f_inside < values[-1]:
                    simplex[-1], values[-1] = inside, f_inside
                else:
                    shrink = True
            if shrink:
                for j in range(1, size + 1):
                    simplex[j] = np.clip(simplex[0] + SHRINK * (simplex[j] - simplex[0]), lower, upper)
                    values[j] = evaluate(simplex[j])
            iterations += 1
        except _Exhausted:
            pass
        order()
    return simplex[0], calls < MAX_EVALUATIONS and iterations < MAX_EVALUATIONS


def _fit_at(data: np.ndarray, xmin: np.float64) -> _Distribution:
    """powerlaw's Truncated_Power_Law fitted at one xmin; `valid` set as its find_xmin reads it."""
    distribution = _Distribution(data[data >= xmin], xmin)
    best, converged = nelder_mead(
        distribution.negative_log_likelihood,
        np.array([distribution.alpha, distribution.lambda_]),
        np.array([ALPHA_RANGE[0], LAMBDA_MIN]),
        np.array([ALPHA_RANGE[1], np.inf]),
    )
    distribution.alpha, distribution.lambda_ = best[0], best[1]
    near_boundary = (
        distribution.alpha - NEAR_BOUNDARY < ALPHA_RANGE[0]
        or distribution.alpha + NEAR_BOUNDARY > ALPHA_RANGE[1]
        or distribution.lambda_ - NEAR_BOUNDARY < LAMBDA_MIN
    )
    distribution.valid = distribution.in_range() and converged and not near_boundary
    return distribution


def _empirical_cdf(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, fraction of the data below each): powerlaw's `cdf`."""
    n = float(data.size)
    if not np.any(data[:-1] == data[1:]):
        return data, np.arange(0, n) / n
    values, first = np.unique(data, return_index=True)
    return values, (np.searchsorted(data, data, side="left") / n)[first]


def _ks_distance(distribution: _Distribution, bins: np.ndarray, empirical: np.ndarray) -> float:
    if distribution.tail.size < 2:  # powerlaw gives NaN below 2 points in the tail
        return math.nan
    keep = bins >= distribution.xmin
    bins, actual = bins[keep], empirical[keep]
    actual = (actual - actual[0]) / (1 - actual[0])
    difference = distribution.cdf(bins) - actual
    return float(max(np.max(difference), -np.min(difference)))


def peak_of(data: np.ndarray) -> float:
    """WeightWatcher's xmin_peak: 10^(left edge of the fullest of 100 bins of log10 x)."""
    counts, edges = np.histogram(np.log10(data), bins=PEAK_BINS)
    return float(10 ** edges[np.argmax(counts)])


def fit_truncated_power_law(eigenvalues: np.ndarray, fit: str) -> TruncatedPowerLawFit | None:
    """WeightWatcher 0.7.7's fit="TPL" (`fit="tpl"`) or "E_TPL" (`fit="e_tpl"`) of a spectrum.

    None when fewer than 2 xmin candidates exist (WeightWatcher's status "failed").
    """
    data = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    data = data[data > MIN_EIGENVALUE]
    if data.size < 2:
        return None
    if fit == "tpl":
        low, high = np.min(data), np.max(data)
    elif fit == "e_tpl":
        peak = peak_of(data)
        low, high = min(np.log10(0.95 * peak), 1.5 * peak), max(np.log10(0.95 * peak), 1.5 * peak)
    else:
        raise ValueError(f"unknown truncated power-law fit {fit!r}")
    candidates = np.unique(data[(data >= low) & (data < high)])[:-1]
    if candidates.size < 2:
        return None
    bins, empirical = _empirical_cdf(data)
    with np.errstate(all="ignore"):  # out-of-range trial parameters overflow; powerlaw silences this too
        fits = [_fit_at(data, xmin) for xmin in candidates]
        distances = np.array([_ks_distance(candidate, bins, empirical) for candidate in fits])
    valid = np.array([candidate.valid for candidate in fits])
    best = int(np.argmin(np.where(valid, distances, np.inf))) if valid.any() else int(np.argmin(distances))
    chosen = fits[best]
    distance = float(distances[best])
    return TruncatedPowerLawFit(
        alpha=float(chosen.alpha),
        lambda_=float(chosen.lambda_),
        xmin=float(chosen.xmin),
        ks_distance=distance if math.isfinite(distance) else None,
        tail_size=int(np.count_nonzero(np.asarray(eigenvalues) >= chosen.xmin)),
        valid=bool(chosen.valid),
    )
