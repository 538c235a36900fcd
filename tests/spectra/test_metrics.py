"""Per-layer spectral metrics (algorithms.md section 4) on spectra whose values are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

import htsr_cli
from htsr_cli.spectra.fit import PowerLawFit, fit_power_law
from htsr_cli.spectra.metrics import spectral_metrics
from htsr_cli.spectra.solver import Eigensolver

# A planted spectrum 1, 2, 4, 8: sum 15, lambda_max 8, and p = x / 15 for the entropy.
PLANTED = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)


def fit(alpha: float) -> PowerLawFit:
    return PowerLawFit(alpha=alpha, xmin=2.0, ks_distance=0.125, sigma=0.5, tail_size=3, candidates="exact")


def test_norm_metrics_of_a_planted_spectrum_without_a_fit():
    metrics = spectral_metrics(PLANTED, None)
    assert metrics["num_evals"] == 4 and metrics["lambda_max"] == 8.0
    assert metrics["log_spectral_norm"] == pytest.approx(math.log10(8), rel=1e-15)
    assert metrics["log_norm"] == pytest.approx(math.log10(15), rel=1e-15)
    assert metrics["stable_rank"] == 15 / 8
    # -sum p ln p = ln 15 - (1 ln 1 + 2 ln 2 + 4 ln 4 + 8 ln 8) / 15 = ln 15 - 34 ln 2 / 15, over ln R = ln 4
    assert metrics["entropy"] == pytest.approx((math.log(15) - 34 / 15 * math.log(2)) / math.log(4), rel=1e-14)
    for key in ("alpha", "xmin", "ks_distance", "sigma", "tail_size", "alpha_weighted", "log_alpha_norm"):
        assert metrics[key] is None, key


def test_fit_metrics_of_a_planted_spectrum():
    metrics = spectral_metrics(PLANTED, fit(2.0))
    assert (metrics["alpha"], metrics["xmin"], metrics["ks_distance"], metrics["sigma"], metrics["tail_size"]) == (
        2.0, 2.0, 0.125, 0.5, 3
    )
    assert metrics["alpha_weighted"] == pytest.approx(2 * math.log10(8), rel=1e-15)  # alpha log10 lambda_max
    assert metrics["log_alpha_norm"] == pytest.approx(math.log10(1 + 4 + 16 + 64), rel=1e-14)  # log10 sum x^2


def test_zero_eigenvalues_count_but_are_left_out_of_the_logs():
    metrics = spectral_metrics(torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64), fit(1.5))
    assert metrics["num_evals"] == 3 and metrics["stable_rank"] == 1.0
    assert metrics["entropy"] is None  # one positive eigenvalue: no spread to measure
    assert metrics["log_alpha_norm"] == pytest.approx(1.5 * math.log10(3), rel=1e-14)


def test_an_all_zero_spectrum_has_no_norms():
    metrics = spectral_metrics(torch.zeros(4, dtype=torch.float64), fit(2.0))
    assert metrics["lambda_max"] == 0.0
    for key in ("log_spectral_norm", "log_norm", "stable_rank", "entropy", "alpha_weighted", "log_alpha_norm"):
        assert metrics[key] is None, key


def test_the_alpha_norm_of_huge_eigenvalues_does_not_overflow():
    metrics = spectral_metrics(torch.tensor([1e300, 1e300], dtype=torch.float64), fit(3.0))
    # log10(2 x 1e900), where 1e900 itself is beyond float64
    assert metrics["log_alpha_norm"] == pytest.approx(900 + math.log10(2), rel=1e-14)
    assert metrics["entropy"] == pytest.approx(1.0, rel=1e-14)  # two equal eigenvalues: the maximum


def test_layer_numbers_are_the_fit_of_the_pooled_spectrum(state_dict):
    report = htsr_cli.analyze(state_dict, xmin="ks", device="cpu")
    weight = state_dict["features.0.weight"]
    esd = Eigensolver.create("cpu").pooled_eigenvalues(weight.reshape(32, 16, 9).permute(2, 0, 1))
    fit = fit_power_law(esd, "ks")
    layer = report.layer("features.0")
    assert layer.alpha == fit.alpha and layer.xmin == fit.xmin and layer.tail_size == fit.tail_size
    assert layer.lambda_max == float(esd[-1])
    assert layer.log_norm == pytest.approx(math.log10(float(esd.sum())), rel=1e-12)
    assert layer.stable_rank == pytest.approx(float(esd.sum() / esd[-1]), rel=1e-12)
    assert layer.alpha_weighted == pytest.approx(fit.alpha * math.log10(float(esd[-1])), rel=1e-12)
    assert layer.log_alpha_norm == pytest.approx(math.log10(float((esd ** fit.alpha).sum())), rel=1e-10)
    p = esd / esd.sum()
    assert layer.entropy == pytest.approx(float(-(p * p.log()).sum()) / math.log(esd.numel()), rel=1e-12)
