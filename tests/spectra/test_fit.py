"""The power-law fit against hand-computed values and planted spectra (algorithms.md section 3)."""

import math

import numpy as np
import pytest
import torch

from htsr_cli.spectra import fit
from htsr_cli.spectra.fit import fit_ks, fit_median, fit_peak, fit_power_law, hill_alphas, ks_distances, peak_eigenvalue


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def reference_scan(x):
    """The published loop, one candidate at a time: (alpha, D) for every i in [0, N-2]."""
    x = np.asarray(x, dtype=np.float64)
    out = []
    for i in range(len(x) - 1):
        n = len(x) - i
        alpha = 1 + n / np.sum(np.log(x[i:] / x[i]))
        if not alpha > 1:
            out.append((alpha, 1.0))
            continue
        k = np.arange(n)
        d = np.max(np.abs(1 - (x[i:] / x[i]) ** (1 - alpha) - k / n))
        out.append((alpha, d))
    return out


def test_median_vector_1_2_4_8():
    result = fit_median(t([1, 2, 4, 8]))
    assert result.alpha == pytest.approx(1 + 2 / math.log(2), abs=1e-12)
    assert result.alpha == pytest.approx(3.885390, abs=1e-6)
    # D = 1 - 2^-(2/ln 2) - 1/2 = 1/2 - e^-2 = 0.3646647 (algorithms.md rounds it to 0.364660)
    assert result.ks_distance == pytest.approx(0.5 - math.exp(-2), abs=1e-12)
    assert result.ks_distance == pytest.approx(0.364660, abs=1e-5)
    assert result.xmin == 4.0
    assert result.tail_size == 2
    assert result.sigma == pytest.approx((result.alpha - 1) / math.sqrt(2))


def test_ks_on_1_2_4_8_by_hand():
    # i=0: alpha = 1 + 4/ln(64) = 1.961797, D = max(|0|, |1-2^-0.9618-1/4|, |1-4^-0.9618-2/4|, |1-8^-0.9618-3/4|) = 0.236583
    # i=1: alpha = 1 + 3/ln(8) = 2.442695, D = 0.302464 ; i=2: the median fit above, D = 0.364660
    result = fit_ks(t([1, 2, 4, 8]))
    assert result.alpha == pytest.approx(1 + 4 / math.log(64), abs=1e-12)
    assert result.ks_distance == pytest.approx(0.236583, abs=1e-6)
    assert result.xmin == 1.0 and result.tail_size == 4


def test_ks_drops_tiny_eigenvalues_first():
    with_zeros = fit_ks(t([0.0, 1e-6, 1, 2, 4, 8]))
    assert with_zeros == fit_ks(t([1, 2, 4, 8]))


def test_vectorised_scan_equals_published_loop():
    g = torch.Generator().manual_seed(3)
    x = torch.sort(torch.rand(300, generator=g, dtype=torch.float64) ** -1.3).values
    starts = torch.arange(0, x.numel() - 1)
    alphas = hill_alphas(x, starts)
    distances = ks_distances(x, starts, alphas)
    expected = reference_scan(x.numpy())
    np.testing.assert_allclose(alphas.numpy(), [a for a, _ in expected], rtol=1e-12)
    np.testing.assert_allclose(distances.numpy(), [d for _, d in expected], rtol=1e-10, atol=1e-13)
    best = int(np.argmin([d if a > 1 else np.inf for a, d in expected]))
    assert fit_ks(x).xmin == x[best]


def test_chunked_scan_matches_unchunked(monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = torch.sort(torch.rand(500, generator=g, dtype=torch.float64) ** -0.8).values
    whole = fit_ks(x)
    monkeypatch.setattr(fit, "CHUNK_ELEMENTS", 700)  # forces one candidate row per chunk
    assert fit_ks(x) == whole


def test_peak_by_hand():
    # log10 x spans [0, 2]; the fullest of 100 bins is the one holding the five 10's: [1.0, 1.02).
    x = t(sorted([1, 3, 10, 10, 10, 10, 10, 30, 60, 100]))
    assert peak_eigenvalue(x) == pytest.approx(10.0)
    result = fit_peak(x)
    # candidates: x_i <= 15 and x_i >= log10(9.5) = 0.978 -> i in 0..6, scored exactly.
    expected = reference_scan(x.numpy())[:7]
    best = int(np.argmin([d if a > 1 else np.inf for a, d in expected]))
    assert result.alpha == pytest.approx(expected[best][0], rel=1e-12)
    assert result.ks_distance == pytest.approx(expected[best][1], rel=1e-10)


def test_peak_lower_bound_is_the_published_log_comparison():
    # peak p = 10^3 -> lower bound log10(950) = 2.98: the candidate x = 2 is excluded, x = 5 kept.
    x = t(sorted([2.0, 5.0] + [1000.0] * 8 + [3000.0, 9000.0]))
    result = fit_peak(x)
    assert result.xmin >= 5.0


@pytest.mark.parametrize("method", ["ks", "median", "peak"])
def test_fit_fails_as_none_never_minus_one(method):
    assert fit_power_law(t([3.0, 3.0, 3.0, 3.0]), method) is None
    assert fit_power_law(t([1.0]), method) is None


@pytest.mark.parametrize("a", [2.5, 4.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_pareto_spectrum_is_recovered(a, seed):
    """W = Q1 diag(sqrt(x)) Q2^T with Pareto x: the solver + ks fit recover the exponent."""
    from htsr_cli.spectra.solver import Eigensolver

    n = 2000
    g = torch.Generator().manual_seed(seed)
    u = 1.0 - torch.rand(n, generator=g, dtype=torch.float64)  # (0, 1]
    x = u ** (-1.0 / (a - 1.0))
    q1, _ = torch.linalg.qr(torch.randn(n + 100, n, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    w = q1 @ torch.diag(x.sqrt()) @ q2.T  # (n + 100) x n
    esd = Eigensolver.create("cpu").pooled_eigenvalues(w.unsqueeze(0))
    torch.testing.assert_close(esd, torch.sort(x).values, rtol=1e-10, atol=0)
    result = fit_ks(esd)
    assert abs(result.alpha - a) <= 0.15


def test_grid_used_above_exact_limit(monkeypatch):
    monkeypatch.setattr(fit, "EXACT_SCAN_LIMIT", 100)
    g = torch.Generator().manual_seed(5)
    x = torch.sort(torch.rand(3000, generator=g, dtype=torch.float64) ** -0.7).values
    grid = fit_ks(x)
    monkeypatch.setattr(fit, "EXACT_SCAN_LIMIT", 10_000)
    exact = fit_ks(x)
    assert grid.candidates == "grid" and exact.candidates == "exact"
    assert abs(grid.alpha - exact.alpha) < 0.02


def test_refined_grid_finds_a_short_tail_an_index_grid_steps_over(monkeypatch):
    """A cubed-Gaussian matrix's ESD has its KS optimum in a short tail; the grid must reach it.

    Sizes are scaled down (400 candidates on 6,000 eigenvalues) to keep the exact
    scan fast; the ratio of grid spacing to tail size is that of a real FARMS pool.
    """
    from htsr_cli.spectra.solver import Eigensolver

    g = torch.Generator().manual_seed(0)
    windows = torch.randn(10, 600, 600, generator=g, dtype=torch.float64) ** 3  # a pool of 6,000
    x = Eigensolver.create("cpu").pooled_eigenvalues(windows)
    monkeypatch.setattr(fit, "EXACT_SCAN_LIMIT", 100)
    monkeypatch.setattr(fit, "GRID_CANDIDATES", 400)
    exact = fit._best_of(x, torch.arange(x.numel() - 1), "exact")
    index_only = fit._best_of(x, torch.as_tensor(np.unique(np.linspace(0, x.numel() - 2, 400).round().astype(int))), "grid")
    grid = fit_ks(x)
    assert exact.tail_size < x.numel() / 400  # shorter than one index-grid step
    assert abs(index_only.alpha - exact.alpha) > 1.0
    assert grid.candidates == "grid"
    assert grid.alpha == pytest.approx(exact.alpha, abs=0.02)


@pytest.mark.parametrize("chunk", [1, 2_000, 40_000])
def test_scan_is_bit_identical_whatever_the_chunk_rows(monkeypatch, chunk):
    """Chunks hold as many candidate rows as fit in CHUNK_ELEMENTS at their own width, so row counts vary."""
    g = torch.Generator().manual_seed(11)
    x = torch.sort(torch.rand(700, generator=g, dtype=torch.float64) ** -1.1).values
    starts = torch.arange(0, x.numel() - 1)
    alphas = hill_alphas(x, starts)
    whole = ks_distances(x, starts, alphas)
    monkeypatch.setattr(fit, "CHUNK_ELEMENTS", chunk)
    assert torch.equal(ks_distances(x, starts, alphas), whole)
    np.testing.assert_allclose(whole.numpy(), [d for _, d in reference_scan(x.numpy())], rtol=1e-10, atol=1e-13)
