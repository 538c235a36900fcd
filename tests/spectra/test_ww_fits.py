"""WeightWatcher 0.7.7's small-N path, finger clipping and truncated power law
(algorithms.md, "WeightWatcher's TPL fit, finger clipping and small-N path"):
hand-computed cases here, WeightWatcher's own numbers in test_ww_reference_fits.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from htsr_cli.spectra.fit import (
    FINGER_MIN_ALPHA,
    MAX_FINGERS,
    PowerLawFit,
    clip_fingers,
    fit_ks,
    fit_power_law,
    fit_small_n_ww,
)
from htsr_cli.spectra.tpl import _gammainc_upper, fit_truncated_power_law, nelder_mead


def test_small_n_eight_geometric_eigenvalues_have_one_candidate_and_the_bias_corrected_alpha():
    # x_k = e^k, k = 0..7: the only tail of >= 8 is the whole spectrum; S = 0+1+...+7 = 28.
    x = torch.exp(torch.arange(8, dtype=torch.float64))
    fit = fit_small_n_ww(x)
    assert fit.xmin == 1.0 and fit.tail_size == 8
    assert fit.alpha == pytest.approx(1 + 7 / 28, rel=1e-15)
    # D = max_k |k/8 - (1 - e^(-k/4))|
    expected = max(abs(k / 8 - (1 - math.exp(-k * 0.25))) for k in range(8))
    assert fit.ks_distance == pytest.approx(expected, rel=1e-14)
    assert fit.sigma == pytest.approx(0.25 / math.sqrt(8))
    # htsr's own fit of the same spectrum: 1 + n / S over the best KS tail, a different number
    assert fit_ks(x).alpha != fit.alpha


def test_small_n_below_eight_eigenvalues_fits_the_whole_spectrum():
    x = torch.exp(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))  # S = 3, n = 3
    fit = fit_small_n_ww(x)
    assert (fit.xmin, fit.tail_size) == (1.0, 3)
    assert fit.alpha == pytest.approx(1 + 2 / 3)
    assert fit_small_n_ww(torch.ones(5, dtype=torch.float64)) is None  # S = 0: no power law
    assert fit_small_n_ww(torch.tensor([2.0], dtype=torch.float64)) is None


def test_small_n_picks_the_tail_with_the_smallest_distance_among_tails_of_eight_or_more():
    rng = np.random.default_rng(3)
    x = torch.tensor(np.sort(rng.pareto(2.0, 15) + 1.0))
    fit = fit_small_n_ww(x)
    scores = []
    for i in range(15 - 8 + 1):
        tail = x[i:].numpy()
        n = tail.size
        alpha = 1 + (n - 1) / np.sum(np.log(tail / tail[0]))
        d = np.max(np.abs(np.arange(n) / n - (1 - (tail / tail[0]) ** (1 - alpha))))
        scores.append((d, i, alpha))
    _, best, alpha = min(scores)
    assert fit.xmin == float(x[best]) and fit.alpha == pytest.approx(alpha, rel=1e-14)


def test_small_n_ww_applies_only_below_twenty_eigenvalues_above_the_ks_threshold():
    rng = np.random.default_rng(4)
    x = torch.tensor(np.sort(rng.pareto(2.0, 20) + 1.0))
    assert fit_power_law(x, "ks", small_n="ww") == fit_power_law(x, "ks")
    with_zeros = torch.cat([torch.zeros(5, dtype=torch.float64), x[:15]])  # 15 count: zeros are dropped first
    assert fit_power_law(with_zeros, "ks", small_n="ww") == fit_small_n_ww(x[:15])


def _fake_fit(alpha_by_size: dict[int, float | None]):
    def fit(x: torch.Tensor) -> PowerLawFit | None:
        alpha = alpha_by_size[x.numel()]
        if alpha is None:
            return None
        return PowerLawFit(alpha, float(x[0]), 0.1, 0.1, x.numel(), "exact")

    return fit


def test_clipping_starts_at_two_eigenvalues_and_takes_the_first_refit_more_than_one_lower():
    x = torch.arange(1, 31, dtype=torch.float64)
    # unclipped 5.0; removing 1 is never tried; 2 removed -> 4.5 (not enough), 3 removed -> 3.9
    alphas = {30: 5.0, 29: 0.5, 28: 4.5, 27: 3.9, 26: 2.5}
    clipped = clip_fingers(x, _fake_fit(alphas))
    assert (clipped.alpha, clipped.clipped, clipped.num_fingers, clipped.raw_alpha) == (3.9, 3, 2, 5.0)


def test_clipping_stops_at_the_minimum_alpha_or_a_failed_refit_and_keeps_the_unclipped_fit():
    x = torch.arange(1, 31, dtype=torch.float64)
    at_floor = clip_fingers(x, _fake_fit({30: 2.9, 28: FINGER_MIN_ALPHA, 27: 1.0}))
    assert (at_floor.alpha, at_floor.clipped, at_floor.num_fingers, at_floor.raw_alpha) == (2.9, 0, 0, 2.9)
    failed = clip_fingers(x, _fake_fit({30: 4.0, 28: None}))
    assert (failed.alpha, failed.num_fingers) == (4.0, 0)
    steady = {size: 6.0 for size in range(20, 31)}
    never = clip_fingers(x, _fake_fit(steady))
    assert (never.alpha, never.num_fingers) == (6.0, 0)
    assert clip_fingers(x, _fake_fit({30: None})) is None


def test_clipping_removes_at_most_max_fingers_minus_one():
    x = torch.arange(1, 31, dtype=torch.float64)
    alphas = {size: 8.0 for size in range(20, 31)}
    alphas[30 - (MAX_FINGERS - 1)] = 6.5
    assert clip_fingers(x, _fake_fit(alphas)).clipped == MAX_FINGERS - 1
    alphas[30 - (MAX_FINGERS - 1)] = 8.0
    alphas[30 - MAX_FINGERS] = 1.5  # never reached
    assert clip_fingers(x, _fake_fit(alphas)).num_fingers == 0


@pytest.mark.parametrize("method", ["ks", "median", "peak"])
def test_clipping_composes_with_every_xmin_method_on_a_planted_finger(method):
    # A Pareto tail (density exponent 3.5) with 3 planted outliers far beyond it.
    rng = np.random.default_rng(7)
    tail = np.sort((1.0 - rng.random(300)) ** (-1.0 / 2.5))
    x = torch.tensor(np.sort(np.concatenate([tail, tail[-1] * np.array([30.0, 60.0, 120.0])])))
    plain = fit_power_law(x, method)
    clipped = fit_power_law(x, method, fix_fingers="clip_xmax")
    assert clipped.raw_alpha == plain.alpha
    if clipped.num_fingers:
        assert clipped.alpha + 1.0 < plain.alpha
        refit = fit_power_law(x[: x.numel() - clipped.clipped], method)
        assert (clipped.alpha, clipped.xmin) == (refit.alpha, refit.xmin)
    else:
        assert (clipped.alpha, clipped.clipped) == (plain.alpha, 0)


def test_the_upper_incomplete_gamma_of_negative_order_matches_its_closed_form():
    # Gamma(-1/2, z) = 2 e^-z / sqrt(z) - 2 sqrt(pi) erfc(sqrt(z))
    for z in (0.01, 0.5, 3.0):
        closed = 2 * math.exp(-z) / math.sqrt(z) - 2 * math.sqrt(math.pi) * math.erfc(math.sqrt(z))
        assert _gammainc_upper(-0.5, z) == pytest.approx(closed, rel=1e-13)


def test_nelder_mead_finds_a_bounded_minimum_to_its_tolerance():
    point, converged = nelder_mead(
        lambda p: float((p[0] - 1.2) ** 2 + 3 * (p[1] - 0.4) ** 2), np.array([2.0, 2.0]),
        np.array([0.0, 0.0]), np.array([3.0, np.inf]),
    )
    assert converged and abs(point[0] - 1.2) < 1e-2 and abs(point[1] - 0.4) < 1e-2
    # the minimum outside the box: the optimiser stops on its edge
    edge, _ = nelder_mead(lambda p: float((p[0] - 5.0) ** 2 + p[1] ** 2), np.array([1.0, 1.0]),
                          np.array([0.0, 0.0]), np.array([3.0, np.inf]))
    assert edge[0] == pytest.approx(3.0, abs=1e-3)


def test_tpl_test_vector_of_algorithms_md_and_too_few_candidates():
    # 60 Pareto samples (density exponent 3.5): powerlaw 2.0.0's numbers for the same call.
    sample = np.sort((1 - np.random.default_rng(1).random(60)) ** (-1 / 2.5))
    fit = fit_truncated_power_law(sample, "tpl")
    assert (fit.alpha, fit.lambda_, fit.xmin, fit.ks_distance) == pytest.approx(
        (2.4529620992708114, 0.41314275007787293, 1.01629046499925, 0.05235506572093418), rel=1e-9
    )
    assert fit.valid and fit.tail_size == int(np.count_nonzero(sample >= fit.xmin))
    assert fit_truncated_power_law(np.array([1.0, 2.0, 3.0]), "tpl") is None  # one candidate left
    assert fit_truncated_power_law(np.array([1e-7, 2.0]), "tpl") is None
