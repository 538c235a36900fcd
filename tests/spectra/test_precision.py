"""Precision modes (issue 15): what each computes in, how accurate the default is, and the float32 guard.

- mixed (default): float32 Gram from narrow weights, float64 eigensolver. Pinned here:
  lambda_max within a rounding bound derived below, alpha within 1e-3 of the
  all-float64 path on planted and trained spectra.
- float64: the reference, top eigenvalue within 1e-10 of svdvals(W.double())**2.
- float32: float32 eigensolver, guarded per layer; the guard must fire where
  float32 is wrong (near-tie and wide-dynamic-range spectra) and not where it is fine.
"""

from __future__ import annotations

import math

import pytest
import torch

import htsr_cli
from htsr_cli.spectra import fit as fit_module
from htsr_cli.spectra.fit import FLOAT32_ALPHA_TOLERANCE, fit_power_law, float32_alpha_error
from htsr_cli.spectra.matrices import as_slices
from htsr_cli.spectra.solver import Eigensolver

from tests.conftest import FIXTURES

MIXED = Eigensolver.create("cpu", "mixed")
FLOAT64 = Eigensolver.create("cpu", "float64")
FLOAT32 = Eigensolver.create("cpu", "float32")
UNIT_ROUNDOFF_32 = 2.0**-24


def planted(x: torch.Tensor, seed: int, dtype: torch.dtype = torch.float32, extra_rows: int = 50) -> torch.Tensor:
    """W = Q1 diag(sqrt(x)) Q2^T with random orthogonal Q1, Q2: the eigenvalues of W^T W are x."""
    g = torch.Generator().manual_seed(seed)
    n = x.numel()
    q1, _ = torch.linalg.qr(torch.randn(n + extra_rows, n, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (q1 @ torch.diag(x.sqrt()) @ q2.T).to(dtype)


def pareto(n: int, alpha: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (1.0 - torch.rand(n, generator=g, dtype=torch.float64)) ** (-1.0 / (alpha - 1.0))


def reference(weight: torch.Tensor) -> torch.Tensor:
    return torch.sort(torch.cat([torch.linalg.svdvals(s.double()) ** 2 for s in as_slices(weight)])).values


# --- what each mode computes in --------------------------------------------------------------


def test_each_mode_forms_its_gram_and_solves_in_its_precision():
    for stored in (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn):
        assert MIXED.gram_dtype(stored) == torch.float32
        assert FLOAT32.gram_dtype(stored) == torch.float32
        assert FLOAT64.gram_dtype(stored) == torch.float64
    assert MIXED.gram_dtype(torch.float64) == torch.float64  # float64 weights keep a float64 Gram
    assert FLOAT32.gram_dtype(torch.float64) == torch.float32
    assert (MIXED.eigensolver_dtype, FLOAT64.eigensolver_dtype, FLOAT32.eigensolver_dtype) == (
        torch.float64, torch.float64, torch.float32,
    )


def test_the_gram_is_the_lower_triangle_of_w_t_w():
    """Only the lower triangle is formed (eigvalsh reads no more); it equals W^T W there."""
    weight = torch.randn(700, 600, generator=torch.Generator().manual_seed(3))  # side 600: three column blocks
    gram = FLOAT64.gram(weight[None])[0]
    exact = weight.double().T @ weight.double()
    torch.testing.assert_close(torch.tril(gram), torch.tril(exact), rtol=1e-12, atol=1e-10)
    wide = FLOAT64.gram(weight.T[None])[0]  # a wide matrix: the Gram of its short side, the same one
    torch.testing.assert_close(torch.tril(wide), torch.tril(exact), rtol=1e-12, atol=1e-10)


# --- float64: the reference bar ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_float64_mode_top_eigenvalue_within_1e_10_of_svdvals(dtype):
    g = torch.Generator().manual_seed(7)
    weights = {"wide.weight": torch.randn(120, 400, generator=g).to(dtype), "conv.weight": torch.randn(48, 40, 3, 3, generator=g).to(dtype)}
    report = htsr_cli.analyze(weights, precision="float64")
    assert report.settings["gram_precision"] == report.settings["eigensolver_precision"] == "float64"
    for key, weight in weights.items():
        expected = float(reference(weight)[-1])
        assert abs(report.layer(key[: -len(".weight")]).lambda_max - expected) / expected < 1e-10


# --- mixed: the default, pinned ---------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,dtype",
    [((2000, 256), torch.bfloat16), ((300, 1200), torch.float16), ((1000, 300), torch.float32), ((64, 32, 3, 3), torch.bfloat16)],
)
def test_mixed_lambda_max_is_within_the_float32_rounding_bound(shape, dtype):
    """|lambda_max(mixed) - lambda_max| <= gamma_L * sigma_max(|A|)^2, relative to sigma_max(A)^2.

    Why: each Gram entry is a length-L dot product of columns of A (L = long side)
    accumulated in float32, so |dG_ij| <= gamma_L (|A|^T |A|)_ij with
    gamma_L = L u / (1 - L u), u = 2^-24, whatever the summation order (products
    of bf16/fp16 values are even exact). Then ||dG||_2 <= gamma_L ||(|A|^T |A|)||_2 =
    gamma_L sigma_max(|A|)^2, and Weyl's inequality moves lambda_max by at most that.
    The float64 eigensolver adds ~1e-15. Measured errors sit near 1e-7, far inside.
    """
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))).to(dtype)
    exact = reference(weight)
    esd = MIXED.pooled_eigenvalues(as_slices(weight))
    bound = 0.0
    for matrix in as_slices(weight):
        a = matrix.double() if matrix.shape[0] >= matrix.shape[1] else matrix.double().T
        gamma = a.shape[0] * UNIT_ROUNDOFF_32 / (1 - a.shape[0] * UNIT_ROUNDOFF_32)
        bound = max(bound, gamma * float(torch.linalg.matrix_norm(a.abs(), 2)) ** 2)
    error = abs(float(esd[-1]) - float(exact[-1]))
    assert error <= bound + 1e-13 * float(exact[-1])
    assert error / float(exact[-1]) < 1e-5  # measured: about 1e-7


def _alpha_differences(first: htsr_cli.Report, second: htsr_cli.Report) -> list[float]:
    differences = []
    for a, b in zip(first.layers, second.layers):
        assert a.name == b.name and a.status == b.status
        if a.alpha is not None:
            assert a.tail_size == b.tail_size  # xmin is the same eigenvalue
            differences.append(abs(a.alpha - b.alpha))
    return differences


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_alpha_matches_float64_on_planted_spectra(dtype):
    weights = {
        f"planted.{k}.weight": planted(pareto(n, alpha, seed=k), seed=k, dtype=dtype)
        for k, (n, alpha) in enumerate([(600, 2.5), (400, 4.0), (300, 3.0)])
    }
    differences = _alpha_differences(htsr_cli.analyze(weights, precision="float64"), htsr_cli.analyze(weights))
    assert len(differences) == 3 and max(differences) <= 1e-3


@pytest.mark.parametrize("fixture", ["tiny-cnn-trained.pth", "tiny-llama", "resnet18_w16.pth"])
def test_mixed_alpha_matches_float64_on_trained_fixtures(fixture):
    mixed = htsr_cli.analyze(FIXTURES / fixture)
    assert mixed.settings["precision"] == "mixed" and mixed.settings["eigensolver_precision"] == "float64"
    differences = _alpha_differences(htsr_cli.analyze(FIXTURES / fixture, precision="float64"), mixed)
    assert differences and max(differences) <= 1e-3


@pytest.mark.minilm
def test_mixed_alpha_matches_float64_on_a_real_trained_model(minilm_dir):
    mixed = htsr_cli.analyze(minilm_dir)
    exact = htsr_cli.analyze(minilm_dir, precision="float64")
    differences = _alpha_differences(exact, mixed)
    assert len(differences) == 39 and max(differences) <= 1e-3  # measured: 1.4e-6
    for a, b in zip(exact.layers, mixed.layers):
        if a.lambda_max:
            assert abs(a.lambda_max - b.lambda_max) / a.lambda_max < 1e-5  # measured: 3.5e-7


def test_report_says_which_precisions_were_used():
    narrow = {"fc.weight": torch.randn(60, 40).to(torch.bfloat16)}
    wide = {"fc.weight": torch.randn(60, 40, dtype=torch.float64)}
    both = {**narrow, "other.weight": torch.randn(60, 40, dtype=torch.float64)}
    cases = [
        (narrow, "mixed", "float32", "float64"),
        (wide, "mixed", "float64", "float64"),
        (both, "mixed", "float32+float64", "float64"),
        (narrow, "float64", "float64", "float64"),
        (wide, "float32", "float32", "float32"),
    ]
    for weights, mode, gram, eigensolver in cases:
        report = htsr_cli.analyze(weights, precision=mode)
        settings = report.settings
        assert (settings["precision"], settings["gram_precision"], settings["eigensolver_precision"]) == (
            mode, gram, eigensolver,
        )
        expected = None if mode != "float32" else False
        assert all(layer.eigensolver_redone is expected for layer in report.layers)


def test_farms_windows_follow_the_gram_policy():
    from htsr_cli.settings import FarmsSettings

    weights = {"fc.weight": planted(pareto(300, 3.0, seed=4), seed=4, dtype=torch.bfloat16, extra_rows=200)}
    farms = FarmsSettings(window=120, steps=4)
    mixed = htsr_cli.analyze(weights, farms=farms).layer("fc")
    exact = htsr_cli.analyze(weights, farms=farms, precision="float64").layer("fc")
    assert mixed.farms_windows == exact.farms_windows == 16
    assert abs(mixed.alpha_farms - exact.alpha_farms) <= 1e-3
    assert mixed.alpha_farms != exact.alpha_farms  # the windows' Grams really are float32 in mixed mode


# --- float32: the guard -----------------------------------------------------------------------


def _unguarded_float32_error(weight: torch.Tensor) -> tuple[float, float]:
    """(|alpha(float32 eigensolver) - alpha(float64 eigensolver)| on one float32 Gram, predicted error)."""
    grams = FLOAT32.gram(weight[None])
    esd32 = torch.sort(FLOAT32.eigenvalues(grams).flatten()).values
    esd64 = torch.sort(FLOAT32.eigenvalues(grams, float64=True).flatten()).values
    fit32, fit64 = fit_power_law(esd32, "ks"), fit_power_law(esd64, "ks")
    return abs(fit32.alpha - fit64.alpha), float32_alpha_error(esd32, fit32, grams.shape[-1])


def near_tie() -> torch.Tensor:
    """A bulk in [0.1, 1] and 20 top eigenvalues equal to 1e-5 relative: alpha is huge and fragile."""
    g = torch.Generator().manual_seed(11)
    bulk = 0.1 + 0.9 * torch.rand(380, generator=g, dtype=torch.float64)
    top = 100.0 * (1.0 + 1e-5 * torch.rand(20, generator=g, dtype=torch.float64))
    return planted(torch.cat([bulk, top]), seed=11)


def wide_dynamic_range() -> torch.Tensor:
    """A power law with alpha 1.3 over ten decades: its tail reaches far below float32's resolution."""
    x = pareto(400, 1.3, seed=12)
    return planted(1e6 * x / x.max(), seed=12)


@pytest.mark.parametrize("make", [near_tie, wide_dynamic_range])
def test_float32_guard_redoes_layers_where_float32_is_wrong(make):
    weight = make()
    wrong_by, predicted = _unguarded_float32_error(weight)
    assert wrong_by > FLOAT32_ALPHA_TOLERANCE  # float32 alone really moves alpha
    assert predicted > FLOAT32_ALPHA_TOLERANCE
    guarded = htsr_cli.analyze({"w.weight": weight}, precision="float32").layer("w")
    assert guarded.eigensolver_redone is True
    # Redone = a float64 eigensolve of the same float32 Gram: exactly what mixed mode computes.
    mixed = htsr_cli.analyze({"w.weight": weight}).layer("w")
    assert (guarded.alpha, guarded.xmin, guarded.lambda_max) == (mixed.alpha, mixed.xmin, mixed.lambda_max)


@pytest.mark.parametrize(
    "weight",
    [
        planted(pareto(500, 2.5, seed=13), seed=13),
        planted(pareto(200, 3.0, seed=17), seed=17),
    ],
    ids=["pareto-2.5", "pareto-3"],
)
def test_float32_guard_keeps_float32_where_it_is_fine(weight):
    wrong_by, predicted = _unguarded_float32_error(weight)
    assert predicted <= FLOAT32_ALPHA_TOLERANCE and wrong_by <= FLOAT32_ALPHA_TOLERANCE
    guarded = htsr_cli.analyze({"w.weight": weight}, precision="float32").layer("w")
    exact = htsr_cli.analyze({"w.weight": weight}, precision="float64").layer("w")
    assert guarded.eigensolver_redone is False
    assert abs(guarded.alpha - exact.alpha) <= FLOAT32_ALPHA_TOLERANCE


@pytest.mark.parametrize("side, noise_side", [(50, 128), (128, 128), (384, 384), (2048, 2048)])
def test_float32_error_prediction_is_the_first_order_bound(side, noise_side):
    """(alpha - 1)^2 * noise * (mean 1/x over the tail + 1/xmin), noise = 0.1 max(n, 128) eps32 lambda_max."""
    x = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    fit = fit_power_law(x, "median")  # tail [4, 8]: alpha = 1 + 2 / ln 2
    noise = 0.1 * noise_side * torch.finfo(torch.float32).eps * 8.0
    expected = (fit.alpha - 1) ** 2 * noise * ((1 / 4 + 1 / 8) / 2 + 1 / 4)
    assert float32_alpha_error(x, fit, side=side) == pytest.approx(expected, rel=1e-12)
    assert math.isclose(fit.alpha, 1 + 2 / math.log(2), rel_tol=1e-12)


@pytest.mark.parametrize("side", [32, 64])
def test_float32_noise_model_covers_small_grams(side):
    """Small Grams are noisier per row than 0.1 x n (the tiny LLaMA's reach 0.26 x n at n = 32): the
    model's floor of n = 128 covers what seeded Gaussian Grams of that size really do."""
    g = torch.Generator().manual_seed(side)
    worst = 0.0
    for _ in range(20):
        grams = FLOAT32.gram(torch.randn(4 * side, side, generator=g)[None])
        error = (FLOAT32.eigenvalues(grams) - FLOAT32.eigenvalues(grams, float64=True)).abs().max()
        lambda_max = float(FLOAT32.eigenvalues(grams, float64=True).max())
        worst = max(worst, float(error) / (torch.finfo(torch.float32).eps * lambda_max))
    assert worst <= fit_module.FLOAT32_NOISE * max(side, fit_module.FLOAT32_NOISE_MIN_SIDE)


def test_peak_always_solves_in_float64(minilm_dir):
    """peak bins log10 from the smallest eigenvalue, which a float32 Gram cannot resolve: mixed and
    float32 run the float64 reference path with xmin=peak and say so in the report's settings."""
    reference = htsr_cli.analyze(minilm_dir, xmin="peak", precision="float64")
    for precision in ("mixed", "float32"):
        report = htsr_cli.analyze(minilm_dir, xmin="peak", precision=precision)
        assert report.settings["precision"] == precision
        assert report.settings["gram_precision"] == "float64"
        assert report.settings["eigensolver_precision"] == "float64"
        assert [layer.alpha for layer in report.layers] == [layer.alpha for layer in reference.layers]
