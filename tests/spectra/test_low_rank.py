"""Low-rank approximations and the detX condition (spectra/low_rank.py), against hand values and direct definitions."""

from __future__ import annotations

import math

import pytest
import torch

from htsr_cli.spectra.low_rank import best_rank_k, detx_count, per_slice, percent_count


def detx_by_definition(eigenvalues: list[float]) -> int:
    """WeightWatcher's loop, written out: grow the tail from the top until its product of
    mean-1 eigenvalues drops below 1."""
    values = sorted(eigenvalues)
    scaled = [value * len(values) / sum(values) for value in values]
    for start in range(len(values) - 1, 0, -1):
        if math.prod(scaled[start:]) < 1.0:
            return len(values) - start
    return len(values)


def test_detx_hand_case():
    # mean 1 already: 3.4 >= 1, 3.4 x 0.3 = 1.02 >= 1, 1.02 x 0.2 = 0.204 < 1 -> a tail of 3
    assert detx_count(torch.tensor([0.3, 0.1, 3.4, 0.2])) == 3
    # rescaling does not matter: the same spectrum times 50
    assert detx_count(torch.tensor([15.0, 5.0, 170.0, 10.0])) == 3


def test_detx_degenerate_spectra_give_zero_and_a_tail_that_never_drops_gives_all():
    assert detx_count(torch.tensor([2.0])) == 0
    assert detx_count(torch.tensor([1.5, 1.5, 1.5])) == 0
    # scaled [0.5, 1.5]: the top alone is >= 1 and no longer tail is tried -> every eigenvalue
    assert detx_count(torch.tensor([1.0, 3.0])) == 2


@pytest.mark.parametrize("seed", range(6))
def test_detx_equals_the_definition_on_random_spectra(seed):
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(60, 30, generator=generator, dtype=torch.float64) * torch.logspace(0, -2, 30, dtype=torch.float64)
    eigenvalues = torch.linalg.eigvalsh(matrix.T @ matrix)
    assert detx_count(eigenvalues) == detx_by_definition(eigenvalues.tolist())


def test_detx_does_not_overflow_on_many_large_eigenvalues():
    eigenvalues = torch.cat([torch.full((5000,), 1e-3), torch.full((3000,), 2.0)]).double()
    assert detx_count(eigenvalues) > 3000


def test_percent_and_per_slice_counts():
    assert percent_count(0.8, 10, 1) == 8
    assert percent_count(0.5, 5, 9) == 22  # int(22.5)
    assert per_slice(22, 9) == 3 and per_slice(26, 9) == 3 and per_slice(8, 1) == 8


@pytest.mark.parametrize("shape", [(3, 30, 12), (2, 9, 20)])
def test_best_rank_k_is_the_truncated_svd(shape):
    matrices = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u, s, vh = torch.linalg.svd(matrices, full_matrices=False)
    for keep in (0, 1, 4, min(shape[1:])):
        expected = u[..., :keep] @ torch.diag_embed(s[..., :keep]) @ vh[..., :keep, :]
        assert torch.allclose(best_rank_k(matrices, keep), expected, atol=1e-10)


def test_a_planted_low_rank_matrix_is_recovered_from_its_noisy_version():
    generator = torch.Generator().manual_seed(3)
    signal = torch.randn(80, 3, generator=generator, dtype=torch.float64) @ torch.randn(3, 40, generator=generator, dtype=torch.float64)
    noise = 0.01 * torch.randn(80, 40, generator=generator, dtype=torch.float64)
    recovered = best_rank_k((signal + noise).unsqueeze(0), 3)[0]
    # the rank-3 projection removes most of the noise: far closer to the signal than the noisy matrix is
    assert torch.linalg.norm(recovered - signal) < 0.5 * torch.linalg.norm(noise)
    assert torch.linalg.matrix_rank(recovered) == 3
