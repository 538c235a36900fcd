"""Sharpness and ensemble diversity as SharpBalance (Lu et al. 2024) measures them.

Adaptive worst-case sharpness (Kwon et al. 2021, ASAM; Andriushchenko et al. 2023), the measure
SharpBalance reports for its ensemble members:

    S(w) = mean over batches B of  max_{||g||_p <= rho} L_B(w + |w| * g) - L_B(w)

the perturbation g scaled elementwise by |w| (so rescaling a layer's weights, which leaves the
function unchanged, leaves S unchanged); L_B a batch's mean loss, the batches weighted by size.
The maximum is found by projected gradient ascent on g: `ascent_steps` steps of length step_size * rho
along the normalised gradient (p = 2) or its sign (p = inf), projected back onto the ball, from a
seeded random start on the ball's surface (g = 0 is a stationary point at a minimum). The largest
loss seen along the ascent is kept, so S >= 0. The model runs in eval mode. SharpBalance's code
maximises the same objective with Auto-PGD (adaptive steps, momentum) on batches of 5 samples;
the fixed-step ascent here is simpler and can find a lower maximum (docs/algorithms.md).

Diversity of an ensemble of M members on the same samples, from each member's predictive
distribution p_m = softmax(logits_m) per prediction:
    disagreement:  mean over member pairs of the fraction of predictions whose argmax differ
    kl:            mean over ordered pairs (i != j) of the mean KL(p_i || p_j)
    variance:      mean over predictions and classes of the variance of p_m over members (1/M)
The ensemble predicts the mean of the members' distributions.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from htsr_cli.errors import InvalidSetting
from htsr_cli.landscape.objective import (
    Batch,
    Batches,
    LossFunction,
    Objective,
    ProgressCallback,
    as_batches,
    as_objective,
    call_with,
    trainable_parameters,
)

L2, LINF = "2", "inf"


@dataclass(frozen=True)
class SharpnessSettings:
    rho: float = 0.5  # radius of the adaptive ball (SharpBalance/ASAM's rho for l2)
    norm: str = L2
    ascent_steps: int = 20
    step_size: float = 0.1  # each ascent step moves step_size * rho
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rho > 0:
            raise InvalidSetting("rho", self.rho, "must be positive")
        if self.norm not in (L2, LINF):
            raise InvalidSetting("norm", self.norm, f"must be {L2} or {LINF}")
        if self.ascent_steps < 1:
            raise InvalidSetting("ascent_steps", self.ascent_steps, "must be at least 1")
        if not self.step_size > 0:
            raise InvalidSetting("step_size", self.step_size, "must be positive")


@dataclass(frozen=True)
class Sharpness:
    sharpness: float  # weighted mean over batches of the worst loss increase found
    loss: float  # the unperturbed mean loss
    per_batch: list[float]


def _on_ball(shapes: list[torch.Size], norm: str, rho: float, generator: torch.Generator, like: list[Tensor]) -> list[Tensor]:
    if norm == LINF:
        return [((torch.rand(s, generator=generator, dtype=t.dtype) * 2 - 1) * rho).to(t.device) for s, t in zip(shapes, like)]
    start = [torch.randn(s, generator=generator, dtype=t.dtype).to(t.device) for s, t in zip(shapes, like)]
    length = sum(float((g**2).sum()) for g in start) ** 0.5
    return [g * (rho / length) for g in start]


def _project(gamma: list[Tensor], norm: str, rho: float) -> list[Tensor]:
    if norm == LINF:
        return [g.clamp(-rho, rho) for g in gamma]
    length = sum(float((g**2).sum()) for g in gamma) ** 0.5
    return gamma if length <= rho else [g * (rho / length) for g in gamma]


def adaptive_sharpness(
    model: nn.Module,
    batches: Iterable[Batch] | Batches,
    loss: Objective | LossFunction | None = None,
    settings: SharpnessSettings = SharpnessSettings(),
    progress: ProgressCallback | None = None,
) -> Sharpness:
    """Adaptive worst-case sharpness within radius rho, by projected gradient ascent per batch
    (`loss`: classification cross-entropy unless given)."""
    objective, batches = as_objective(loss), as_batches(batches)
    model.eval()
    parameters = trainable_parameters(model)
    names = list(parameters)
    weights = [parameters[name].detach() for name in names]
    scales = [w.abs() for w in weights]
    shapes = [w.shape for w in weights]
    generator = torch.Generator().manual_seed(settings.seed)
    total = len(batches)

    def loss_at(gamma: list[Tensor], inputs, targets) -> Tensor:
        moved = {name: w + s * g for name, w, s, g in zip(names, weights, scales, gamma)}
        return objective.loss(call_with(model, moved, objective, inputs), targets)

    increases: list[float] = []
    counts: list[int] = []
    losses: list[float] = []
    for index, (inputs, targets) in enumerate(batches):
        if progress is not None:
            progress(index, total, f"sharpness batch {index + 1}")
        with torch.no_grad():
            base = float(objective.loss(objective.forward(model, inputs), targets))
        gamma = _on_ball(shapes, settings.norm, settings.rho, generator, weights)
        worst = base
        for _ in range(settings.ascent_steps):
            gamma = [g.requires_grad_(True) for g in gamma]
            loss = loss_at(gamma, inputs, targets)
            worst = max(worst, float(loss.detach()))
            gradient = [
                torch.zeros_like(g) if d is None else d  # a parameter the loss never reaches
                for g, d in zip(gamma, torch.autograd.grad(loss, gamma, allow_unused=True))
            ]
            with torch.no_grad():
                if settings.norm == LINF:
                    step = [d.sign() for d in gradient]
                else:
                    length = sum(float((d**2).sum()) for d in gradient) ** 0.5
                    step = [d / (length + 1e-12) for d in gradient]
                gamma = _project([g + settings.step_size * settings.rho * d for g, d in zip(gamma, step)], settings.norm, settings.rho)
        with torch.no_grad():
            worst = max(worst, float(loss_at(gamma, inputs, targets)))
        increases.append(worst - base)
        losses.append(base)
        counts.append(objective.count(targets))
    if not counts:
        raise InvalidSetting("batches", "empty", "the data holds no batch")
    samples = sum(counts)
    return Sharpness(
        sharpness=sum(i * c for i, c in zip(increases, counts)) / samples,
        loss=sum(l * c for l, c in zip(losses, counts)) / samples,
        per_batch=increases,
    )


@dataclass(frozen=True)
class Diversity:
    disagreement: float  # mean over member pairs
    kl: float  # mean over ordered member pairs, nats
    variance: float  # mean over predictions and classes of the members' probability variance
    pairwise_disagreement: list[list[float]]  # [M][M], zero diagonal
    pairwise_kl: list[list[float]]  # [M][M]: KL(p_i || p_j)
    member_errors: list[float]  # percent
    member_losses: list[float]
    ensemble_error: float  # percent, of the mean predictive distribution
    ensemble_loss: float


def ensemble_diversity(
    models: Sequence[nn.Module],
    batches: Iterable[Batch] | Batches,
    loss: Objective | LossFunction | None = None,
    progress: ProgressCallback | None = None,
) -> Diversity:
    """Disagreement, KL and prediction variance of `models` on the same batches, with member and
    ensemble error and loss (`loss`: classification cross-entropy unless given)."""
    objective, batches = as_objective(loss), as_batches(batches)
    if len(models) < 2:
        raise InvalidSetting("models", len(models), "diversity needs at least 2 models")
    members = len(models)
    for model in models:
        model.eval()
    disagree = torch.zeros(members, members, dtype=torch.float64)
    kl = torch.zeros(members, members, dtype=torch.float64)
    variance, rows = 0.0, 0
    member_loss = [0.0] * members
    member_wrong = [0] * members
    ensemble_loss, ensemble_wrong, predicted, terms = 0.0, 0, 0, 0
    total = len(batches)
    with torch.no_grad():
        for index, (inputs, targets) in enumerate(batches):
            if progress is not None:
                progress(index, total, f"diversity batch {index + 1}")
            logits = [objective.forward(model, inputs).double() for model in models]
            log_probs = torch.stack([torch.log_softmax(l, dim=-1) for l in logits])  # [M, ..., C]
            flat = log_probs.flatten(1, -2)  # [M, N, C]
            count = objective.count(targets)
            for m, l in enumerate(logits):
                member_loss[m] += float(objective.loss(l, targets)) * count
                member_wrong[m] += objective.mistakes(l, targets)[0]
            ensemble_log = torch.log(log_probs.exp().mean(0))
            ensemble_loss += float(objective.loss(ensemble_log, targets)) * count
            wrong, made = objective.mistakes(ensemble_log, targets)
            ensemble_wrong, predicted, terms = ensemble_wrong + wrong, predicted + made, terms + count
            choices = flat.argmax(-1)  # [M, N]
            for i, j in itertools.permutations(range(members), 2):
                disagree[i, j] += float((choices[i] != choices[j]).sum())
                kl[i, j] += float((flat[i].exp() * (flat[i] - flat[j])).sum())
            variance += float(flat.exp().var(0, unbiased=False).mean(-1).sum())
            rows += flat.shape[1]
    if rows == 0:
        raise InvalidSetting("batches", "empty", "the data holds no batch")
    disagree /= rows
    kl /= rows
    pairs = members * (members - 1)
    return Diversity(
        disagreement=float(disagree.sum()) / pairs,
        kl=float(kl.sum()) / pairs,
        variance=variance / rows,
        pairwise_disagreement=disagree.tolist(),
        pairwise_kl=kl.tolist(),
        member_errors=[100.0 * w / max(predicted, 1) for w in member_wrong],
        member_losses=[l / terms for l in member_loss],
        ensemble_error=100.0 * ensemble_wrong / max(predicted, 1),
        ensemble_loss=ensemble_loss / terms,
    )
