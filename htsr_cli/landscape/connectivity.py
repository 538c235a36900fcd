"""Mode connectivity between two models of one architecture (Garipov et al. 2018), with the MD tree
dataset's summary numbers (Zhou et al. 2024, github.com/YefanZhou/ModelDiagnosis, utils/data.py).

Paths from w_A (t = 0) to w_B (t = 1):
    line:    w(t) = (1 - t) w_A + t w_B
    bezier:  w(t) = (1 - t)^2 w_A + 2 t (1 - t) w_M + t^2 w_B
The middle point w_M starts at (w_A + w_B) / 2 and is trained as Garipov et al. train a curve: each
SGD step (momentum 0.9) draws t ~ U(0, 1) from a seeded generator and takes a gradient step on the
loss of the next batch at w(t), the model in train mode; the learning rate follows their schedule
(constant for the first half, then linearly down to 1% at 90% of the steps, then 1%). Their weight
decay on the curve is not applied.

Each path is evaluated at t = linspace(0, 1, points) (5 points, as the MD tree dataset): mean
training loss and top-1 error in percent. When the model has BatchNorm layers, their running
statistics are recomputed at every point (reset, then one pass over the data in train mode with a
cumulative average), as Garipov et al.'s update_bn does: the stored statistics of w_A belong to w_A
alone and would make every other point look worse than it is.

Summary numbers of a path with errors e_0 .. e_{T-1} (percent):
    mode_connectivity      = m - e_u,   m = (e_0 + e_{T-1}) / 2,   u = argmax_i |e_i - m|
                             (signed: negative when the path rises above its ends, a barrier;
                             positive when it dips below them)
    mode_connectivity_peak = -max(e_1 .. e_{T-2})   (the highest interior error, negated)
    loss_barrier           = max_i [L_i - ((1 - t_i) L_0 + t_i L_{T-1})]   (Frankle et al. 2020)
    error_barrier          = the same on the errors
The dataset's columns `mode_connectivity` and `mode_connectivity_peak` are the Bezier path's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.landscape.objective import (
    Batch,
    Batches,
    LossFunction,
    Objective,
    ProgressCallback,
    as_batches,
    as_objective,
    call_with,
    mean_loss_and_error,
    trainable_parameters,
)

LINE, BEZIER = "line", "bezier"


@dataclass(frozen=True)
class ConnectivitySettings:
    points: int = 5
    curve_steps: int = 200  # SGD steps training the Bezier middle point (0: keep the midpoint)
    curve_learning_rate: float = 0.01
    momentum: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.points < 3:
            raise InvalidSetting("points", self.points, "must be at least 3 (both ends and one inside)")
        if self.curve_steps < 0:
            raise InvalidSetting("curve_steps", self.curve_steps, "must be at least 0")
        if not self.curve_learning_rate > 0:
            raise InvalidSetting("curve_learning_rate", self.curve_learning_rate, "must be positive")
        if not 0 <= self.momentum < 1:
            raise InvalidSetting("momentum", self.momentum, "must be in [0, 1)")


@dataclass(frozen=True)
class PathProfile:
    path: str
    t: list[float]
    loss: list[float]
    error: list[float]  # percent
    mode_connectivity: float
    mode_connectivity_peak: float
    loss_barrier: float
    error_barrier: float


@dataclass(frozen=True)
class Connectivity:
    line: PathProfile
    bezier: PathProfile
    curve_steps: int
    batchnorm_recomputed: bool


def check_same_architecture(first: nn.Module, second: nn.Module, names: tuple[str, str] = ("the first model", "the second model")) -> None:
    """One line naming the first tensor that differs when two models do not share an architecture."""
    for kind, a, b in (
        ("parameter", dict(first.named_parameters()), dict(second.named_parameters())),
        ("buffer", dict(first.named_buffers()), dict(second.named_buffers())),
    ):
        for name in [*a, *(name for name in b if name not in a)]:
            if name not in b or name not in a:
                owner, other = (names[0], names[1]) if name in a else (names[1], names[0])
                raise HtsrError(f"{names[0]} and {names[1]} have different architectures: {kind} {name!r} is in {owner} only, not in {other}")
            if a[name].shape != b[name].shape:
                raise HtsrError(
                    f"{names[0]} and {names[1]} have different architectures: {kind} {name!r} is "
                    f"{tuple(a[name].shape)} in {names[0]} and {tuple(b[name].shape)} in {names[1]}"
                )


def mode_connectivity(errors: list[float]) -> float:
    """The MD tree dataset's signed mode connectivity of a path's errors."""
    middle = (errors[0] + errors[-1]) / 2
    furthest = max(range(len(errors)), key=lambda i: abs(errors[i] - middle))
    return middle - errors[furthest]


def mode_connectivity_peak(errors: list[float]) -> float:
    return -max(errors[1:-1])


def barrier(values: list[float], t: list[float]) -> float:
    return max(v - ((1 - s) * values[0] + s * values[-1]) for v, s in zip(values, t))


def profile(path: str, t: list[float], loss: list[float], error: list[float]) -> PathProfile:
    return PathProfile(
        path, t, loss, error, mode_connectivity(error), mode_connectivity_peak(error), barrier(loss, t), barrier(error, t)
    )


def garipov_learning_rate(base: float, progress: float) -> float:
    """Garipov et al.'s curve schedule at `progress` in [0, 1] of the training."""
    if progress <= 0.5:
        return base
    if progress <= 0.9:
        return base * (1.0 - (progress - 0.5) / 0.4 * 0.99)
    return base * 0.01


def bezier_point(start: dict[str, Tensor], middle: dict[str, Tensor], end: dict[str, Tensor], t: float | Tensor) -> dict[str, Tensor]:
    return {name: (1 - t) ** 2 * start[name] + 2 * t * (1 - t) * middle[name] + t**2 * end[name] for name in start}


def line_point(start: dict[str, Tensor], end: dict[str, Tensor], t: float) -> dict[str, Tensor]:
    return {name: (1 - t) * start[name] + t * end[name] for name in start}


def _batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)}


def _fresh_statistics(model: nn.Module) -> dict[str, Tensor]:
    """Zeroed running means, unit variances and counters for every BatchNorm layer, by buffer name."""
    fresh = {}
    for prefix, module in _batchnorms(model).items():
        if module.track_running_stats:
            fresh[f"{prefix}.running_mean"] = torch.zeros_like(module.running_mean)
            fresh[f"{prefix}.running_var"] = torch.ones_like(module.running_var)
            fresh[f"{prefix}.num_batches_tracked"] = torch.zeros_like(module.num_batches_tracked)
    return fresh


def _evaluate(
    model: nn.Module, weights: dict[str, Tensor], batches: Batches, objective: Objective
) -> tuple[float, float]:
    """(mean loss, error %) of the model with `weights`, BatchNorm statistics recomputed for them."""
    tensors = dict(weights)
    layers = _batchnorms(model)
    with torch.no_grad():
        if layers:
            tensors.update(_fresh_statistics(model))
            momenta = {name: layer.momentum for name, layer in layers.items()}
            for layer in layers.values():
                layer.momentum = None  # a cumulative average over the pass, not an exponential one
            model.train()
            try:
                for inputs, _ in batches:
                    call_with(model, tensors, objective, inputs)
            finally:
                for name, layer in layers.items():
                    layer.momentum = momenta[name]
    return mean_loss_and_error(model.eval(), batches, objective, tensors)


def train_bezier_middle(
    model: nn.Module,
    start: dict[str, Tensor],
    end: dict[str, Tensor],
    batches: Batches,
    objective: Objective,
    settings: ConnectivitySettings,
    progress: ProgressCallback | None = None,
    total: int = 0,
) -> dict[str, Tensor]:
    """The Bezier curve's middle point, trained to lower the loss along the curve."""
    middle = {name: ((start[name] + end[name]) / 2).clone().requires_grad_(True) for name in start}
    if settings.curve_steps == 0:
        return {name: value.detach() for name, value in middle.items()}
    optimizer = torch.optim.SGD(list(middle.values()), lr=settings.curve_learning_rate, momentum=settings.momentum)
    generator = torch.Generator().manual_seed(settings.seed)
    # train mode updates BatchNorm statistics in place: give it scratch copies, never the model's own
    scratch = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.train()
    step = 0
    while step < settings.curve_steps:
        for inputs, targets in batches:
            if step == settings.curve_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = garipov_learning_rate(settings.curve_learning_rate, step / settings.curve_steps)
            t = float(torch.rand((), generator=generator))
            weights = bezier_point(start, middle, end, t)
            loss = objective.loss(call_with(model, {**weights, **scratch}, objective, inputs), targets)
            if not math.isfinite(float(loss.detach())):
                raise HtsrError(f"the Bezier curve's loss became {float(loss.detach())} at step {step + 1}: lower the learning rate")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if progress is not None:
                progress(step, total, f"Bezier step {step}")
    model.eval()
    return {name: value.detach() for name, value in middle.items()}


def connect(
    first: nn.Module,
    second: nn.Module,
    batches: Iterable[Batch] | Batches,
    loss: Objective | LossFunction | None = None,
    settings: ConnectivitySettings = ConnectivitySettings(),
    progress: ProgressCallback | None = None,
) -> Connectivity:
    """Loss and error along the line and the trained Bezier curve from `first` to `second`
    (`loss`: classification cross-entropy unless given)."""
    objective, batches = as_objective(loss), as_batches(batches)
    check_same_architecture(first, second)
    start = {name: value.detach() for name, value in trainable_parameters(first).items()}
    end = {name: value.detach() for name, value in trainable_parameters(second).items()}
    total = settings.curve_steps + 2 * settings.points
    middle = train_bezier_middle(first, start, end, batches, objective, settings, progress, total)
    t = [i / (settings.points - 1) for i in range(settings.points)]
    profiles = {}
    done = settings.curve_steps
    for path in (LINE, BEZIER):
        losses, errors = [], []
        for s in t:
            weights = line_point(start, end, s) if path == LINE else bezier_point(start, middle, end, s)
            loss, error = _evaluate(first, weights, batches, objective)
            losses.append(loss)
            errors.append(error)
            done += 1
            if progress is not None:
                progress(done, total, f"{path} t={s:.2f}")
        profiles[path] = profile(path, t, losses, errors)
    return Connectivity(profiles[LINE], profiles[BEZIER], settings.curve_steps, bool(_batchnorms(first)))
