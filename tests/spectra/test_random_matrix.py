"""WeightWatcher's random-matrix metrics on hand-computed and planted spectra (algorithms.md test vectors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from htsr_cli.spectra.random_matrix import (
    MAX_TRAP_EVALS,
    detx,
    jensen_shannon_distance,
    linear_kde,
    mp_fit,
    nelder_mead_1d,
    randomized_metrics,
    replicas_for,
    shuffled_slices,
)


def esd(matrix: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.svd(matrix, compute_uv=False) ** 2)


def test_detx_hand_computed():
    # Rescaled to mean 1: [0.25, 0.5, 0.75, 1, 2.5]; tail products 2.5, 2.5, 1.875, 0.9375 < 1:
    # a tail of 4 starting at 0.5 (2.0 in the ESD's units).
    assert detx(np.array([1.0, 2.0, 3.0, 4.0, 10.0])) == (4, 2.0)


def test_detx_without_a_crossing_and_degenerate_spectra():
    # Only the top eigenvalue can form a tail short of the whole ESD, and 1.5 >= 1: WeightWatcher's
    # fallback is the whole ESD and its second eigenvalue.
    assert detx(np.array([0.5, 1.5])) == (2, 1.5)
    assert detx(np.array([2.0, 2.0, 2.0])) == (0, 2.0)
    assert detx(np.array([3.0])) == (0, 3.0)


def test_detx_does_not_overflow_where_a_product_would():
    # 400 eigenvalues of 1e4 among 10,000 tiny ones: their product overflows float64,
    # the sum of logarithms does not, and the tail still ends where the product falls below 1.
    evals = np.sort(np.concatenate([np.full(10_000, 1e-3), np.full(400, 1e4)]))
    count, value = detx(evals)
    assert count > 400 and value == pytest.approx(1e-3)


def test_jensen_shannon_distance_of_vectors():
    assert jensen_shannon_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(math.sqrt(math.log(2)))
    p = np.array([1.0, 2.0, 3.0])
    assert jensen_shannon_distance(p, p) == 0.0
    # Each vector is normalised: a scaled copy is the same distribution.
    assert jensen_shannon_distance(p, 10 * p) == pytest.approx(0.0, abs=1e-12)


def test_linear_kde_is_the_triangular_kernel():
    # Samples at 0 and 1, bandwidth 0.5: the density is (1 - |x - s| / h) / h averaged over the samples.
    density = linear_kde(np.array([0.0, 1.0]), np.array([0.0, 0.25, 0.5, 1.0]), 0.5)
    np.testing.assert_allclose(density, [1.0, 0.5, 0.0, 1.0])


def test_nelder_mead_finds_a_parabola_minimum_to_its_tolerance():
    assert nelder_mead_1d(lambda x: (x - 3.0) ** 2, 1.0) == pytest.approx(3.0, abs=1e-3)
    assert nelder_mead_1d(lambda x: (x + 0.5) ** 2, 0.0) == pytest.approx(-0.5, abs=1e-3)


@pytest.mark.parametrize("rows, cols", [(2000, 500), (600, 600)])
def test_mp_fit_of_a_gaussian_matrix_has_sigma_1_and_no_spikes(rows, cols):
    # The ESD rescaled to mean 1 is the MP law of sigma 1 (quarter circle of the singular values when square).
    evals = esd(np.random.default_rng(0).standard_normal((rows, cols)))
    fit = mp_fit(evals, rows, cols)
    assert fit.sigma_mp == pytest.approx(1.0, abs=0.05)
    assert fit.num_spikes == 0
    assert fit.bulk_max == pytest.approx(evals[-1], rel=0.1)
    if rows != cols:
        q = rows / cols
        ratio = ((1 - 1 / math.sqrt(q)) / (1 + 1 / math.sqrt(q))) ** 2
        assert fit.bulk_min == pytest.approx(fit.bulk_max * ratio)


def test_mp_fit_counts_planted_spikes():
    rng = np.random.default_rng(1)
    rows, cols = 2000, 500
    noise = rng.standard_normal((rows, cols))
    u, v = rng.standard_normal((rows, 3)), rng.standard_normal((cols, 3))
    u, _ = np.linalg.qr(u)
    v, _ = np.linalg.qr(v)
    planted = noise + u @ np.diag([400.0, 300.0, 250.0]) @ v.T
    fit = mp_fit(esd(planted), rows, cols)
    assert fit.num_spikes == 3
    assert fit.mp_softrank < 0.2  # the bulk edge is far below the largest spike
    assert mp_fit(np.zeros(10), 10, 10) is None


def test_shuffled_slices_permute_within_each_slice_from_the_seed():
    stack = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    first = shuffled_slices(stack, torch.Generator().manual_seed(5))
    again = shuffled_slices(stack, torch.Generator().manual_seed(5))
    other = shuffled_slices(stack, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    for k in range(2):
        assert torch.equal(first[k].flatten().sort().values, stack[k].flatten())


def test_a_large_element_is_a_correlation_trap():
    # One weight 60 standard deviations out is a rank-one spike the shuffle keeps: a trap.
    rng = np.random.default_rng(2)
    rows, cols = 400, 200
    weights = rng.standard_normal((rows, cols))
    weights[17, 3] = 60.0
    shuffled = weights.flatten()
    rng.shuffle(shuffled)
    metrics = randomized_metrics(esd(weights), [esd(shuffled.reshape(rows, cols))], rows, cols)
    assert metrics.rand_num_spikes == 1
    assert metrics.trap_evals == [metrics.max_rand_eval]
    assert metrics.max_rand_eval > metrics.rand_fit.spike_edge
    gaussian = rng.standard_normal((rows, cols))
    clean = randomized_metrics(esd(gaussian), [esd(rng.permutation(gaussian.flatten()).reshape(rows, cols))], rows, cols)
    assert clean.rand_num_spikes == 0 and clean.trap_evals == []


def test_trap_list_is_bounded_and_small_matrices_pool_five_shuffles():
    assert replicas_for(99) == 5 and replicas_for(100) == 1
    rng = np.random.default_rng(3)
    rows, cols = 300, 300
    weights = rng.standard_normal((rows, cols))
    weights[rng.integers(0, rows, 30), rng.integers(0, cols, 30)] = 80.0
    shuffled = esd(rng.permutation(weights.flatten()).reshape(rows, cols))
    metrics = randomized_metrics(esd(weights), [shuffled], rows, cols)
    assert metrics.rand_num_spikes > MAX_TRAP_EVALS
    assert len(metrics.trap_evals) == MAX_TRAP_EVALS
    assert metrics.trap_evals == sorted(metrics.trap_evals, reverse=True)
