"""The power-law fit of an eigenvalue spectrum (PL_Alpha_Hill, algorithms.md section 3).

All functions take a 1-D float64 tensor of eigenvalues sorted ascending and work
on whatever device it lives on. For a tail start index i (tail x_i..x_{N-1},
n = N - i):

    alpha(i) = 1 + n / sum_j ln(x_j / x_i)
    D(i)     = max_k |1 - (x_{i+k} / x_i)^(1 - alpha(i)) - k / n|

Candidates are scored in chunks of a [candidates, tail] matrix, so the exact
O(N^2) scan runs as a few large tensor operations instead of a Python loop.

Two of WeightWatcher 0.7.7's variants are here too (algorithms.md, "WeightWatcher's
TPL fit, finger clipping and small-N path"): its small-N path for spectra of fewer
than SMALL_N_CUTOFF eigenvalues (`small_n="ww"`), and its finger clipping
(`fix_fingers="clip_xmax"`), which composes with every xmin method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

KS_MIN_EIGENVALUE = 1e-5  # the `ks` method drops eigenvalues at or below this first
EXACT_SCAN_LIMIT = 20_000  # above this many eigenvalues `ks` scores a candidate grid
GRID_CANDIDATES = 2_000  # candidates scored in all above EXACT_SCAN_LIMIT
GRID_FRACTION = 0.8  # of them on the first grid; the rest refine its best brackets
REFINED_MINIMA = 2
MEDIAN_XMIN_POS = 2.0
PEAK_BINS = 100
CHUNK_ELEMENTS = 1 << 17  # 1 MB of float64 per temporary in the D scan: it stays in cache
# The float32 guard: redo a float32 eigensolve in float64 when the fit's alpha
# could be off by more than this (issue 15's measured bound, see float32_alpha_error).
FLOAT32_ALPHA_TOLERANCE = 1e-3
FLOAT32_NOISE = 0.1  # float32 eigenvalue noise is about this * n * eps32 * lambda_max ...
# ... with n at least this: small Grams are noisier per row than 0.1 * n. Measured
# (benchmarks/float32_noise.py, max |error| / (eps32 lambda_max) over 123 matrices):
# 8.2 at n=32, 10.5 at n=64, 22.7 at n=384, 65.5 at n=1024, 191.9 at n=2048.
FLOAT32_NOISE_MIN_SIDE = 128

# WeightWatcher 0.7.7's small-N path (WW_powerlaw.WWFit.fit_powerlaw_smallN):
SMALL_N_CUTOFF = 20  # spectra with fewer eigenvalues (above KS_MIN_EIGENVALUE) take it
SMALL_N_MIN_TAIL = 8  # tails shorter than this are not candidates
SMALL_N_DEGENERATE_LOG_SUM = 1e-12  # a tail whose sum ln(x_j / xmin) is at most this is skipped
# WeightWatcher 0.7.7's finger clipping (RMT_Util.fit_clipped_powerlaw, with the
# defaults analyze() passes: max_fingers is always 10 unless set to at least half
# the eigenvalues, finger_thresh 1.0, min_alpha 2.0):
MAX_FINGERS = 10  # refits with 2 .. MAX_FINGERS - 1 of the largest eigenvalues removed
FINGER_THRESH = 1.0  # a refit is taken when its alpha is more than this below the unclipped one
FINGER_MIN_ALPHA = 2.0  # ... and clipping stops, keeping the unclipped fit, at a refit alpha <= this


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float
    xmin: float
    ks_distance: float
    sigma: float
    tail_size: int
    candidates: str  # "exact" or "grid"
    # With fix_fingers="clip_xmax": the largest eigenvalues the fit left out (its
    # tail is the tail_size eigenvalues below them), WeightWatcher's `num_fingers`
    # (one less than `clipped` when something was clipped, else 0) and the alpha
    # of the unclipped fit (WeightWatcher's `raw_alpha`). None without clipping.
    clipped: int = 0
    num_fingers: int | None = None
    raw_alpha: float | None = None


def hill_alphas(x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """alpha(i) for each start index in `starts` (the Hill / maximum-likelihood estimate)."""
    n_total = x.numel()
    log_x = torch.log(x)
    # suffix[i] = sum_{j >= i} ln x_j
    suffix = torch.flip(torch.cumsum(torch.flip(log_x, (0,)), 0), (0,))
    n = (n_total - starts).to(x.dtype)
    log_sum = suffix[starts] - n * log_x[starts]
    return 1.0 + n / log_sum


def ks_distances(x: torch.Tensor, starts: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """D(i) for each start index; invalid candidates (alpha <= 1 or not finite) get 1."""
    n_total = x.numel()
    distances = torch.ones_like(alphas)
    valid = torch.isfinite(alphas) & (alphas > 1.0)
    if not bool(valid.any()):
        return distances
    starts_valid = starts[valid]
    alphas_valid = alphas[valid]
    out = torch.empty_like(alphas_valid)
    log_x = torch.log(x)
    count = starts_valid.numel()
    first_starts = starts_valid.tolist()
    lo = 0
    while lo < count:
        # Rows of candidates whose [rows, T] temporaries stay cache-sized; T shrinks as starts grow.
        rows = max(1, CHUNK_ELEMENTS // max(n_total - first_starts[lo], 1))
        s = starts_valid[lo : lo + rows]  # [B]
        a = alphas_valid[lo : lo + rows]  # [B]
        base = min(first_starts[lo : lo + rows])  # from the host list: no device sync per chunk
        log_tail = log_x[base:]  # [T], T = N - base
        j = torch.arange(base, n_total, device=x.device)  # [T] absolute index
        n = (n_total - s).to(x.dtype)[:, None]  # [B, 1]
        empirical = (j[None, :] - s[:, None]).to(x.dtype).div_(n)  # [B, T] k / n, negative before the tail
        # In place on one [B, T] buffer: (x_j / x_i)^(1 - alpha), then |1 - that - k/n|.
        gap = log_tail[None, :] - log_x[s][:, None]
        gap.mul_((1.0 - a)[:, None]).exp_().add_(empirical).sub_(1.0).abs_()
        gap.masked_fill_(empirical < 0, 0.0)
        out[lo : lo + rows] = gap.amax(dim=1)
        lo += rows
    distances[valid] = out
    return distances


def _score(x: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, D) of each candidate; invalid candidates get D = inf so they never win."""
    alphas = hill_alphas(x, starts)
    distances = ks_distances(x, starts, alphas)
    valid = torch.isfinite(alphas) & (alphas > 1.0)
    return alphas, torch.where(valid, distances, torch.full_like(distances, math.inf))


def _best_of(x: torch.Tensor, starts: torch.Tensor, candidates: str) -> PowerLawFit | None:
    """Score the candidate start indices and keep the smallest D (first on ties)."""
    if starts.numel() == 0:
        return None
    alphas, distances = _score(x, starts)
    best = int(torch.argmin(distances))  # argmin returns the first minimum
    if not math.isfinite(float(distances[best])):
        return None
    i = int(starts[best])
    n = x.numel() - i
    alpha = float(alphas[best])
    return PowerLawFit(
        alpha=alpha,
        xmin=float(x[i]),
        ks_distance=float(distances[best]),
        sigma=(alpha - 1.0) / math.sqrt(n),
        tail_size=n,
        candidates=candidates,
    )


def candidate_grid(n_total: int, size: int) -> np.ndarray:
    """At most `size` start indices spread over a large spectrum.

    Half are evenly spaced in index (quantiles of the spectrum), half evenly
    spaced in log tail size, so short tails, which an index grid steps over on a
    10^5-eigenvalue FARMS pool, are candidates too.
    """
    by_index = np.linspace(0, n_total - 2, size // 2)
    by_tail = n_total - np.geomspace(2, n_total, size - size // 2)
    grid = np.round(np.concatenate([by_index, by_tail])).astype(np.int64)
    return np.unique(np.clip(grid, 0, n_total - 2))


def _refined_grid(x: torch.Tensor) -> PowerLawFit | None:
    """Score a grid, then more candidates between the neighbours of its best points.

    At most GRID_CANDIDATES are scored in all: GRID_FRACTION of them on the grid,
    the rest spread evenly inside the brackets of the REFINED_MINIMA best grid
    points (every index when a bracket is that small).
    """
    n_total = x.numel()
    grid = candidate_grid(n_total, int(GRID_CANDIDATES * GRID_FRACTION))
    _, distances = _score(x, torch.as_tensor(grid, device=x.device))
    per_bracket = (GRID_CANDIDATES - len(grid)) // REFINED_MINIMA
    extra = []
    for k in torch.argsort(distances).cpu().numpy()[:REFINED_MINIMA]:
        if not np.isfinite(float(distances[k])):
            continue
        low, high = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
        extra.append(np.unique(np.round(np.linspace(low, high, min(per_bracket, high - low + 1))).astype(np.int64)))
    starts = np.unique(np.concatenate([grid, *extra]))
    return _best_of(x, torch.as_tensor(starts, device=x.device), "grid")


def fit_small_n_ww(x: torch.Tensor) -> PowerLawFit | None:
    """WeightWatcher 0.7.7's fit of a spectrum with fewer than SMALL_N_CUTOFF eigenvalues.

    Candidates are the tails of n >= SMALL_N_MIN_TAIL eigenvalues with
    S = sum ln(x_j / x_i) > 1e-12; each gets the bias-corrected alpha = 1 + (n - 1) / S
    and its D, and xmin minimises D (first on ties). WeightWatcher's small-N code
    also scores each tail by J = D - 0.868 / sqrt(n) and commits the J winner, but
    its WWFit constructor then re-chooses by D over the same arrays, so D decides.
    With no candidate (fewer than 8 eigenvalues) the whole spectrum is the tail.
    numpy in WeightWatcher's order of operations: these few values match its bit
    for bit. WeightWatcher's sigma in that fallback is -1/sqrt(N) (its sigma array
    is filled before the fallback fit); this reports (alpha - 1)/sqrt(N).
    """
    data = x.detach().cpu().double().numpy()
    n_total = data.size
    log_data = np.log(data)
    best: tuple[float, int, float] | None = None  # (D, i, alpha)
    for i in range(n_total - SMALL_N_MIN_TAIL + 1):
        n = float(n_total - i)
        log_sum = np.sum(log_data[i:]) - n * log_data[i]
        if log_sum <= SMALL_N_DEGENERATE_LOG_SUM:
            continue
        alpha = 1.0 + (n - 1.0) / log_sum
        distance = _small_n_distance(data[i:], alpha)
        if best is None or distance < best[0]:
            best = (distance, i, alpha)
    if best is None:
        n = float(n_total)
        log_sum = np.sum(log_data) - n * log_data[0] if n_total else 0.0
        if n_total < 2 or log_sum <= SMALL_N_DEGENERATE_LOG_SUM:
            return None  # WeightWatcher: alpha 0 (no power law), or an error on one eigenvalue
        alpha = 1.0 + (n - 1.0) / log_sum
        best = (_small_n_distance(data, alpha), 0, alpha)
    distance, i, alpha = best
    tail = n_total - i
    return PowerLawFit(
        alpha=float(alpha), xmin=float(data[i]), ks_distance=float(distance),
        sigma=(float(alpha) - 1.0) / math.sqrt(tail), tail_size=tail, candidates="exact",
    )


def _small_n_distance(tail: np.ndarray, alpha: float) -> float:
    """max |k/n - (1 - (x_k / x_0)^(1 - alpha))| over a tail, as WeightWatcher's small-N path computes it."""
    fitted = 1.0 - (tail / tail[0]) ** (1.0 - alpha)
    empirical = np.arange(tail.size, dtype=np.float64) / float(tail.size)
    return float(np.max(np.abs(empirical - fitted)))


def fit_ks(x: torch.Tensor, small_n: str = "htsr") -> PowerLawFit | None:
    """WeightWatcher's default: the xmin minimising the KS distance over all candidates.

    small_n="ww": spectra with fewer than SMALL_N_CUTOFF eigenvalues take
    WeightWatcher 0.7.7's small-N path (`fit_small_n_ww`) instead.
    """
    x = x[x > KS_MIN_EIGENVALUE]
    n_total = x.numel()
    if small_n == "ww" and n_total < SMALL_N_CUTOFF:
        return fit_small_n_ww(x)
    if n_total < 2:
        return None
    if n_total <= EXACT_SCAN_LIMIT:
        return _best_of(x, torch.arange(0, n_total - 1, device=x.device), "exact")
    return _refined_grid(x)


def fit_median(x: torch.Tensor, xmin_pos: float = MEDIAN_XMIN_POS) -> PowerLawFit | None:
    """TempBalance's rule: xmin is the eigenvalue at index floor(N / xmin_pos)."""
    n_total = x.numel()
    i = int(n_total // xmin_pos)
    if n_total < 2 or i > n_total - 2:
        return None
    return _best_of(x, torch.tensor([i], device=x.device), "exact")


def peak_eigenvalue(x: torch.Tensor) -> float:
    """10^(left edge of the fullest of 100 equal bins of log10 x, x > 0)."""
    log_x = torch.log10(x[x > 0]).cpu().numpy()
    counts, edges = np.histogram(log_x, bins=PEAK_BINS)
    return float(10.0 ** edges[int(np.argmax(counts))])


def fit_peak(x: torch.Tensor) -> PowerLawFit | None:
    """AlphaPruning's rule: candidates up to 1.5x the spectrum's density peak.

    The published lower bound compares x with log10(0.95 * peak), a log against a
    linear value; it is kept as published (it rarely removes a candidate).
    """
    n_total = x.numel()
    if n_total < 2 or not bool((x > 0).any()):
        return None
    peak = peak_eigenvalue(x)
    head = x[: n_total - 1]
    in_range = (head <= 1.5 * peak) & (head >= math.log10(0.95 * peak))
    starts = torch.nonzero(in_range).flatten()
    return _best_of(x, starts, "exact")


def _fit_unclipped(x: torch.Tensor, method: str, small_n: str) -> PowerLawFit | None:
    if method == "ks":
        return fit_ks(x, small_n)
    if method == "median":
        return fit_median(x)
    if method == "peak":
        return fit_peak(x)
    raise ValueError(f"unknown xmin method {method!r}")


def clip_fingers(x: torch.Tensor, fit: Callable[[torch.Tensor], PowerLawFit | None]) -> PowerLawFit | None:
    """WeightWatcher 0.7.7's fix_fingers="clip_xmax" around any fit of a sorted spectrum.

    Refit with the k = 2, 3, ..., MAX_FINGERS - 1 largest eigenvalues removed;
    the first refit whose alpha is more than FINGER_THRESH below the unclipped
    alpha is the fit (WeightWatcher's num_fingers = k - 1); a refit alpha at or
    below FINGER_MIN_ALPHA, a refit that finds no fit, or reaching k = MAX_FINGERS
    keeps the unclipped fit (num_fingers = 0). None when the unclipped fit fails.
    """
    first = fit(x)
    if first is None:
        return None
    unclipped = replace(first, num_fingers=0, raw_alpha=first.alpha)
    for removed in range(2, MAX_FINGERS):
        refit = fit(x[: x.numel() - removed]) if x.numel() > removed else None
        if refit is None:
            break
        if refit.alpha + FINGER_THRESH < first.alpha:
            return replace(refit, clipped=removed, num_fingers=removed - 1, raw_alpha=first.alpha)
        if refit.alpha <= FINGER_MIN_ALPHA:
            break
    return unclipped


def fit_power_law(
    x: torch.Tensor, method: str, small_n: str = "htsr", fix_fingers: str = "none"
) -> PowerLawFit | None:
    """Fit alpha with the named xmin method; None when no candidate is valid.

    `small_n` ("htsr" or "ww", xmin=ks only) and `fix_fingers` ("none" or
    "clip_xmax") select WeightWatcher 0.7.7's variants (see the module docstring).
    """
    if fix_fingers == "clip_xmax":
        return clip_fingers(x, lambda values: _fit_unclipped(values, method, small_n))
    if fix_fingers != "none":
        raise ValueError(f"unknown fix_fingers {fix_fingers!r}")
    return _fit_unclipped(x, method, small_n)


def fit_failure_reason(x: torch.Tensor, method: str) -> str:
    """Why `fit_power_law(x, method)` found no fit, in words a user can act on."""
    if x.numel() == 0 or float(x[-1]) == 0.0:
        return "the spectrum is all zero (an all-zero matrix, e.g. a LoRA B matrix before training)"
    if method == "ks" and int((x > KS_MIN_EIGENVALUE).sum()) < 2:
        return f"fewer than 2 eigenvalues above {KS_MIN_EIGENVALUE:g} (xmin=ks ignores smaller ones)"
    return "no valid power-law fit (every candidate alpha <= 1)"


def float32_alpha_error(x: torch.Tensor, fit: PowerLawFit, side: int) -> float:
    """Predicted |alpha error| when the eigenvalues `x` came from a float32 eigensolver.

    Each eigenvalue of an n x n Gram is off by up to noise = 0.1 * max(n, 128) *
    eps32 * lambda_max. alpha = 1 + t / S with S = sum ln(x_j / xmin) over the t tail
    values, so |d alpha| = (alpha - 1)^2 / t * |dS| and
    |dS| <= noise * (sum 1/x_j + t / xmin), which gives
    (alpha - 1)^2 * noise * (mean over the tail of 1/x + 1/xmin).
    """
    noise = FLOAT32_NOISE * max(side, FLOAT32_NOISE_MIN_SIDE) * torch.finfo(torch.float32).eps * float(x[-1])
    end = x.numel() - fit.clipped
    tail = x[end - fit.tail_size : end]
    return (fit.alpha - 1.0) ** 2 * noise * (float(tail.reciprocal().mean()) + 1.0 / fit.xmin)


def guarded_fit(
    spectrum: Callable[[bool], torch.Tensor], method: str, side: int, float32: bool,
    small_n: str = "htsr", fix_fingers: str = "none",
) -> tuple[torch.Tensor, PowerLawFit | None, bool | None]:
    """(ESD, fit, redone) for a spectrum that `spectrum(float64)` computes.

    With `float32` (the eigensolver ran in float32) the fit is checked with
    `float32_alpha_error`; above FLOAT32_ALPHA_TOLERANCE, or when no fit was
    found in a spectrum that is not all zero, the eigenvalues are computed again
    in float64 and fitted again (redone = True). Without, redone is None.
    """
    esd = spectrum(False)
    fit = fit_power_law(esd, method, small_n, fix_fingers)
    if not float32:
        return esd, fit, None
    if fit is None and (esd.numel() == 0 or float(esd[-1]) == 0.0):
        return esd, fit, False
    if fit is not None and float32_alpha_error(esd, fit, side) <= FLOAT32_ALPHA_TOLERANCE:
        return esd, fit, False
    esd = spectrum(True)
    return esd, fit_power_law(esd, method, small_n, fix_fingers), True
