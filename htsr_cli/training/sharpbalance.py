"""SharpBalance (Lu et al., "Sharpness-diversity tradeoff: improving flat ensembles with
SharpBalance", NeurIPS 2024), following its released code (main.py, engine.py):

1. Every member trains on all samples for `warmup_epochs` epochs: with SAM (Foret et al. 2021) for
   the SAM ensemble and SharpBalance, with plain SGD for a deep ensemble.
2. SharpBalance then scores every training sample for every member by its per-sample sharpness,
   the trace of its empirical Fisher: ||grad_w loss(x_i, y_i)||^2 (the code's `test_fisher`, its
   default `--sharpness_type fisher`), and picks each member's `fraction` * N samples of LOWEST
   score (the code calls the split with `ascend=True`).
3. Member i's SAM set is the union of the OTHER members' picks, plus its round-robin share (every
   M-th, from position i) of the samples no member picked (the code's `boosting_sam_split`); the
   remaining samples (its own picks that no other member made, and the others' shares) train with
   plain SGD.
4. Each step on a batch B = B_sam + B_sgd (the code's `mix_step`) takes ONE optimizer step along
       (|B_sgd|/|B|) grad L_sgd(w) + (|B_sam|/|B|) grad L_sam(w + eps),   eps = rho g / ||g||,
   with g = grad L_sam(w): the SAM gradient on the SAM samples, the plain gradient on the rest.

Defaults are the code's: SGD with momentum 0.9 and weight decay 5e-4, rho 0.05. The code's
`--flat_ratio` and `--initial_epochs` default to 0 and -1 (no split) and are set per experiment
by its scripts, which the release does not include; htsr defaults to fraction 0.2 and half the
epochs as warm-up (docs/algorithms.md says why).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from htsr_cli.errors import InvalidSetting
from htsr_cli.settings import ProgressCallback

METHODS = ("sharpbalance", "sam", "deep-ensemble")


@dataclass(frozen=True)
class SharpBalanceSettings:
    members: int = 3
    epochs: int = 20
    warmup_epochs: int | None = None  # None: half of `epochs`
    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    rho: float = 0.05  # SAM's radius (the code's --rho)
    fraction: float = 0.2  # each member's share of lowest-sharpness samples (the code's --flat_ratio)
    method: str = "sharpbalance"  # or "sam" (SAM on all data), "deep-ensemble" (SGD)
    seed: int = 0  # member m starts from torch.manual_seed(seed + m), shuffles with seed + m

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidSetting("method", self.method, f"choose from {', '.join(METHODS)}")
        if self.members < 2:
            raise InvalidSetting("members", self.members, "an ensemble needs at least 2 members")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidSetting(name, getattr(self, name), "must be at least 1")
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs <= self.epochs:
            raise InvalidSetting("warmup_epochs", self.warmup_epochs, f"must be between 0 and epochs ({self.epochs})")
        if not 0 < self.fraction < 1:
            raise InvalidSetting("fraction", self.fraction, "must be between 0 and 1")
        if not self.rho > 0:
            raise InvalidSetting("rho", self.rho, "must be positive")
        if not self.learning_rate > 0:
            raise InvalidSetting("learning_rate", self.learning_rate, "must be positive")

    @property
    def warmup(self) -> int:
        return self.epochs // 2 if self.warmup_epochs is None else self.warmup_epochs


def sam_gradient(parameters: list[Tensor], loss_at: Callable[[], Tensor], rho: float) -> list[Tensor]:
    """SAM's gradient: grad L(w + eps) with eps = rho * g / ||g||, g = grad L(w) (Foret et al. 2021,
    one ascent step). `loss_at` computes the loss at the parameters' current values; they are
    moved to w + eps and back in place, and are unchanged on return."""
    gradient = torch.autograd.grad(loss_at(), parameters, allow_unused=True)
    gradient = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, gradient)]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in gradient))
    scale = rho / (float(norm) + 1e-12)
    with torch.no_grad():
        steps = [g * scale for g in gradient]
        for p, e in zip(parameters, steps):
            p.add_(e)
    try:
        moved = torch.autograd.grad(loss_at(), parameters, allow_unused=True)
    finally:
        with torch.no_grad():
            for p, e in zip(parameters, steps):
                p.sub_(e)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, moved)]


def per_sample_sharpness(model: nn.Module, features: Tensor, labels: Tensor, batch_size: int = 256) -> Tensor:
    """||grad_w cross_entropy(model(x_i), y_i)||^2 for every sample (the trace of its empirical
    Fisher), in eval mode, by vectorised per-sample gradients (torch.func)."""
    from torch.func import functional_call, grad, vmap

    model.eval()
    parameters = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss(params, x, y):
        logits = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, y.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    scores = []
    for start in range(0, len(labels), batch_size):
        grads = per_sample(parameters, features[start : start + batch_size], labels[start : start + batch_size])
        scores.append(sum(g.flatten(1).double().pow(2).sum(1) for g in grads.values()))
    return torch.cat(scores)


def sam_subsets(scores: list[Tensor], fraction: float) -> list[Tensor]:
    """Each member's SAM set as a boolean mask over the N samples, from every member's per-sample
    sharpness `scores` (step 3 of the module docstring; ties broken by sample index)."""
    members, count = len(scores), len(scores[0])
    take = int(count * fraction)
    picks = []
    for score in scores:
        order = torch.sort(score, stable=True).indices  # ascending: the flattest first
        pick = torch.zeros(count, dtype=torch.bool)
        pick[order[:take]] = True
        picks.append(pick)
    unpicked = torch.nonzero(~torch.stack(picks).any(0)).flatten()
    masks = []
    for member in range(members):
        mask = torch.zeros(count, dtype=torch.bool)
        for other in range(members):
            if other != member:
                mask |= picks[other]
        mask[unpicked[member::members]] = True
        masks.append(mask)
    return masks


class SharpBalance:
    """Trains `settings.members` models made by `make_model` on (features, labels) as SharpBalance,
    a SAM ensemble or a deep ensemble (`settings.method`), with the same budget: `epochs` passes."""

    def __init__(self, make_model: Callable[[], nn.Module], settings: SharpBalanceSettings = SharpBalanceSettings()):
        self.make_model = make_model
        self.settings = settings
        self.sam_masks: list[Tensor] | None = None  # after fit, SharpBalance's per-member SAM sets

    def fit(self, features: Tensor, labels: Tensor, progress: ProgressCallback | None = None) -> list[nn.Module]:
        settings = self.settings
        if len(labels) == 0:
            raise InvalidSetting("labels", 0, "no training samples")
        models, optimizers, generators = [], [], []
        for member in range(settings.members):
            torch.manual_seed(settings.seed + member)
            model = self.make_model()
            models.append(model)
            optimizers.append(torch.optim.SGD(model.parameters(), lr=settings.learning_rate, momentum=settings.momentum,
                                              weight_decay=settings.weight_decay))
            generators.append(torch.Generator().manual_seed(settings.seed + member))
        everything = torch.ones(len(labels), dtype=torch.bool)
        masks = [everything if settings.method != "deep-ensemble" else torch.zeros_like(everything)] * settings.members
        total = settings.epochs * settings.members
        for epoch in range(settings.epochs):
            if epoch == settings.warmup and settings.method == "sharpbalance":
                scores = [per_sample_sharpness(model, features, labels) for model in models]
                masks = sam_subsets(scores, settings.fraction)
                self.sam_masks = masks
            for member, (model, optimizer) in enumerate(zip(models, optimizers)):
                if progress is not None:
                    progress(epoch * settings.members + member, total, f"epoch {epoch + 1} member {member + 1}")
                self._epoch(model, optimizer, features, labels, masks[member], generators[member])
        for model in models:
            model.eval()
        return models

    def _epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, features: Tensor, labels: Tensor,
               sam_mask: Tensor, generator: torch.Generator) -> None:
        model.train()
        parameters = [p for p in model.parameters() if p.requires_grad]
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), self.settings.batch_size):
            rows = order[start : start + self.settings.batch_size]
            sam_rows, sgd_rows = rows[sam_mask[rows]], rows[~sam_mask[rows]]
            combined = [torch.zeros_like(p) for p in parameters]
            if len(sgd_rows):
                loss = nn.functional.cross_entropy(model(features[sgd_rows]), labels[sgd_rows])
                weight = len(sgd_rows) / len(rows)
                for total, g in zip(combined, torch.autograd.grad(loss, parameters, allow_unused=True)):
                    if g is not None:
                        total.add_(g, alpha=weight)
            if len(sam_rows):
                x, y = features[sam_rows], labels[sam_rows]
                weight = len(sam_rows) / len(rows)
                gradient = sam_gradient(parameters, lambda: nn.functional.cross_entropy(model(x), y), self.settings.rho)
                for total, g in zip(combined, gradient):
                    total.add_(g, alpha=weight)
            for p, g in zip(parameters, combined):
                p.grad = g
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
