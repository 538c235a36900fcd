"""Per-layer spectral metrics (algorithms.md section 4): pure functions of a sorted ESD."""

from __future__ import annotations

import math

import torch

from htsr_cli.spectra.fit import PowerLawFit


def spectral_metrics(x: torch.Tensor, fit: PowerLawFit | None) -> dict[str, float | int | None]:
    """Norm-based metrics of an ascending, non-negative ESD, and those that need alpha."""
    n = x.numel()
    lambda_max = float(x[-1])
    total = float(x.sum())
    positive = x[x > 0]
    metrics: dict[str, float | int | None] = {
        "num_evals": n,
        "lambda_max": lambda_max,
        "log_spectral_norm": math.log10(lambda_max) if lambda_max > 0 else None,
        "log_norm": math.log10(total) if total > 0 else None,
        "stable_rank": total / lambda_max if lambda_max > 0 else None,
        "entropy": _spectral_entropy(positive),
        "alpha": None,
        "xmin": None,
        "ks_distance": None,
        "sigma": None,
        "tail_size": None,
        "alpha_weighted": None,
        "log_alpha_norm": None,
    }
    if fit is not None:
        metrics.update(
            alpha=fit.alpha,
            xmin=fit.xmin,
            ks_distance=fit.ks_distance,
            sigma=fit.sigma,
            tail_size=fit.tail_size,
            alpha_weighted=(
                fit.alpha * metrics["log_spectral_norm"]
                if metrics["log_spectral_norm"] is not None
                else None
            ),
            # log10 sum x^alpha, through logsumexp so large spectra cannot overflow.
            log_alpha_norm=(
                float(torch.logsumexp(fit.alpha * torch.log(positive), 0)) / math.log(10)
                if positive.numel()
                else None
            ),
        )
    return metrics


def _spectral_entropy(positive: torch.Tensor) -> float | None:
    """Shannon entropy of p = x / sum x over the R positive eigenvalues, divided by ln R."""
    rank = positive.numel()
    if rank < 2:
        return None
    p = positive / positive.sum()
    return float(-(p * torch.log(p)).sum()) / math.log(rank)
