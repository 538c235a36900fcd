"""Centered kernel alignment (CKA) between two models' representations of the same samples.

Direct (Kornblith et al. 2019), for representations X [n, p] and Y [n, q] of n samples:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),   HSIC(K, L) = tr(K H L H) / (n - 1)^2

with H = I - 11^T/n the centering matrix, K = X X^T (linear) or K_ij = exp(-|x_i - x_j|^2 / (2 s^2))
(RBF, s^2 = threshold^2 * median of the squared distances). Linear CKA equals
||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) with column-centred X_c, Y_c.

Minibatch (Nguyen et al. 2021), for data too large for one n x n kernel: the unbiased HSIC of
Song et al. (2012) on each batch of m >= 4 samples, averaged over batches before the ratio:

    HSIC_1(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((m-1)(m-2)) - 2/(m-2) 1^T K~ L~ 1] / (m (m-3))
    CKA_minibatch = mean_b HSIC_1(K_b, L_b) / sqrt(mean_b HSIC_1(K_b, K_b) * mean_b HSIC_1(L_b, L_b))

where K~ is K with its diagonal set to zero. With one batch holding every sample this is the
unbiased CKA of the whole data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.landscape.objective import Batch, Batches, ProgressCallback, as_batches, model_outputs

LINEAR, RBF = "linear", "rbf"


def linear_kernel(x: Tensor) -> Tensor:
    return x @ x.T


def rbf_kernel(x: Tensor, threshold: float = 1.0) -> Tensor:
    squared = torch.cdist(x, x) ** 2
    median = squared.median()  # over all pairs, the diagonal included, as Kornblith et al.'s gram_rbf
    return torch.exp(-squared / (2 * threshold**2 * median.clamp_min(torch.finfo(x.dtype).tiny)))


def kernel(x: Tensor, kind: str, threshold: float = 1.0) -> Tensor:
    x = x.double()
    if kind == LINEAR:
        return linear_kernel(x)
    if kind == RBF:
        return rbf_kernel(x, threshold)
    raise InvalidSetting("kernel", kind, f"must be {LINEAR} or {RBF}")


def hsic(k: Tensor, l: Tensor) -> Tensor:
    """The biased HSIC tr(K H L H) / (n-1)^2."""
    n = k.shape[0]
    centering = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
    return torch.trace(k @ centering @ l @ centering) / (n - 1) ** 2


def unbiased_hsic(k: Tensor, l: Tensor) -> Tensor:
    """Song et al.'s unbiased HSIC_1 of one batch (at least 4 samples)."""
    m = k.shape[0]
    if m < 4:
        raise InvalidSetting("batch_size", m, "minibatch CKA needs batches of at least 4 samples")
    k = k - torch.diag(torch.diag(k))
    l = l - torch.diag(torch.diag(l))
    ones = torch.ones(m, 1, dtype=k.dtype, device=k.device)
    term = torch.trace(k @ l) + (ones.T @ k @ ones).item() * (ones.T @ l @ ones).item() / ((m - 1) * (m - 2))
    term = term - 2.0 / (m - 2) * (ones.T @ k @ l @ ones).item()
    return term / (m * (m - 3))


def cka(x: Tensor, y: Tensor, kind: str = LINEAR, threshold: float = 1.0) -> float:
    """Direct (biased) CKA of two representations of the same n samples."""
    k, l = kernel(x.flatten(1), kind, threshold), kernel(y.flatten(1), kind, threshold)
    return float(hsic(k, l) / (hsic(k, k) * hsic(l, l)).sqrt())


def unbiased_cka(x: Tensor, y: Tensor, kind: str = LINEAR, threshold: float = 1.0) -> float:
    k, l = kernel(x.flatten(1), kind, threshold), kernel(y.flatten(1), kind, threshold)
    return float(unbiased_hsic(k, l) / (unbiased_hsic(k, k) * unbiased_hsic(l, l)).sqrt())


class MinibatchCKA:
    """Accumulates the three unbiased HSICs over batches; `value` is the minibatch CKA so far."""

    def __init__(self, kind: str = LINEAR, threshold: float = 1.0):
        if kind not in (LINEAR, RBF):
            raise InvalidSetting("kernel", kind, f"must be {LINEAR} or {RBF}")
        self.kind, self.threshold = kind, threshold
        self.cross = self.first = self.second = 0.0
        self.batches = 0

    def update(self, x: Tensor, y: Tensor) -> None:
        k, l = kernel(x.flatten(1), self.kind, self.threshold), kernel(y.flatten(1), self.kind, self.threshold)
        self.cross += float(unbiased_hsic(k, l))
        self.first += float(unbiased_hsic(k, k))
        self.second += float(unbiased_hsic(l, l))
        self.batches += 1

    @property
    def value(self) -> float:
        if self.batches == 0:
            raise InvalidSetting("batches", "empty", "the data holds no batch")
        denominator = (self.first * self.second) ** 0.5
        # a constant representation has zero HSIC with itself: CKA is undefined, reported as NaN
        return self.cross / denominator if denominator > 0 else float("nan")


def output_rows(model: nn.Module, inputs: Any) -> Tensor:
    """A model's outputs as one row per prediction: [B, C] for a classifier; [B*L, V] for a
    language model's per-token logits."""
    logits = model_outputs(model, inputs)
    return logits.flatten(0, -2) if logits.dim() > 2 else logits.flatten(1)


@dataclass(frozen=True)
class SimilaritySettings:
    kernel: str = LINEAR
    rbf_threshold: float = 1.0  # RBF bandwidth as a multiple of the median distance

    def __post_init__(self) -> None:
        if self.kernel not in (LINEAR, RBF):
            raise InvalidSetting("kernel", self.kernel, f"must be {LINEAR} or {RBF}")
        if not self.rbf_threshold > 0:
            raise InvalidSetting("rbf_threshold", self.rbf_threshold, "must be positive")


def model_cka(
    first: nn.Module,
    second: nn.Module,
    batches: Iterable[Batch] | Batches,
    settings: SimilaritySettings = SimilaritySettings(),
    representation: Callable[[nn.Module, Any], Tensor] = output_rows,
    progress: ProgressCallback | None = None,
) -> float:
    """Minibatch CKA between two models' representations (default: their outputs) of the same batches."""
    batches = as_batches(batches)
    accumulator = MinibatchCKA(settings.kernel, settings.rbf_threshold)
    total = len(batches)
    first.eval()
    second.eval()
    with torch.no_grad():
        for index, (inputs, _) in enumerate(batches):
            if progress is not None:
                progress(index, total, f"CKA batch {index + 1}")
            x, y = representation(first, inputs), representation(second, inputs)
            if x.shape[0] != y.shape[0]:
                raise HtsrError(f"the two models give {x.shape[0]} and {y.shape[0]} representations of one batch")
            accumulator.update(x, y)
    return accumulator.value
