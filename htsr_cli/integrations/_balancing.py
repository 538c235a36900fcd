"""TempBalance and Model Balancing inside a trainer: what the Trainer and Lightning callbacks share.

A run goes like this:

1. At train begin the optimizer's parameter groups are split once, one
   sub-group per layer (its weight, bias and BatchNorm partner; a LoRA layer's
   adapter matrices), each sub-group a copy of its group's options (weight
   decay, betas, momentum). Parameters outside layers stay together, at
   factor 1.
2. The trainer's LR scheduler keeps driving the groups it was built with: its
   `step` is wrapped so that while it runs the optimizer shows it those
   original groups, and afterwards every sub-group gets
   lr = factor(layer) x the LR the scheduler just set for its group. The
   scheduler therefore never sees a scaled LR, so warmup, cosine, chained
   (`StepLR`'s lr *= gamma) and per-group schedules all keep their own values,
   and `get_last_lr()` (what the trainer logs) is the unscaled schedule.
3. Every N epochs or steps the alphas are recomputed on the live weights
   (on rank 0 only under torch.distributed, then broadcast) and the new factors
   apply from the next optimizer step on.

Which layers are analysed: every module that owns a weight matrix (2-D or
more) with a trainable parameter; a frozen layer is neither analysed nor in
any group, as the trainer leaves it out of the optimizer. In a PEFT model a
LoRA-adapted module (`...attention.self.query`) is one layer: its alpha is that
of its effective weight W + (alpha/r) B A (computed one layer at a time when
the analysis reads it), and its factor applies to its adapter matrices.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from htsr_cli.allocations.learning_rates import bn_partner
from htsr_cli.allocations.tempbalance import DEFAULT_GROUP, TempBalance
from htsr_cli.checkpoints.base import Checkpoint, TensorInfo
from htsr_cli.engine.pipeline import analyze
from htsr_cli.errors import HtsrError, InvalidSetting, brief
from htsr_cli.settings import AnalyzeSettings, require_int

# method -> (map, unit) of algorithms.md section 6
METHODS = {"tempbalance": ("linear", "layer"), "model-balancing": ("sigmoid", "block")}
UNIT_KEY = "htsr_layer"  # names the layer of a split parameter group (visible in optimizer.param_groups)

T = TypeVar("T")


@dataclass(frozen=True)
class Every:
    """When something runs during training: every N optimizer steps, or every N epochs."""

    steps: int | None = None
    epochs: int | None = None

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise InvalidSetting("every_n_steps", self.steps, "give exactly one of every_n_steps and every_n_epochs")
        for name, value in (("every_n_steps", self.steps), ("every_n_epochs", self.epochs)):
            if value is not None:
                require_int(value, name)
                if value < 1:
                    raise InvalidSetting(name, value, "must be at least 1")

    def at_step(self, step: int) -> bool:
        return self.steps is not None and step > 0 and step % self.steps == 0

    def at_epoch(self, epochs_done: int) -> bool:
        return self.epochs is not None and epochs_done > 0 and epochs_done % self.epochs == 0


@dataclass(frozen=True)
class BalanceSettings:
    """What a TempBalance callback does: the method, its map's range, when it recomputes."""

    method: str = "tempbalance"
    every: Every = field(default_factory=lambda: Every(epochs=1))
    min_ratio: float = 0.5  # TempBalance's linear map (Model Balancing's sigmoid has its own range)
    max_ratio: float = 1.5
    xmin: str = "median"  # TempBalance's and Model Balancing's xmin

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidSetting("method", self.method, f"must be one of {', '.join(METHODS)}")
        AnalyzeSettings(xmin=self.xmin)  # checks xmin

    @classmethod
    def from_callback(
        cls, method: str, every_n_epochs: int | None, every_n_steps: int | None,
        min_ratio: float, max_ratio: float, xmin: str,
    ) -> "BalanceSettings":
        """The settings of a callback's keyword arguments: once per epoch when neither interval is given."""
        if every_n_steps is None and every_n_epochs is None:
            every_n_epochs = 1
        return cls(method, Every(every_n_steps, every_n_epochs), min_ratio, max_ratio, xmin)

    @property
    def map(self) -> str:
        return METHODS[self.method][0]

    @property
    def unit(self) -> str:
        return METHODS[self.method][1]


def computed_on_rank_zero(compute: Callable[[], T]) -> T:
    """`compute()` on rank 0 only, its result broadcast to every rank of the default process group.

    Without an initialised group (or with one rank) it is just `compute()`. An
    error on rank 0 reaches every rank (as one line) instead of leaving the
    others waiting in the broadcast.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return compute()
    failure: BaseException | None = None
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box = [(True, compute())]
        except Exception as error:  # every rank must still reach the broadcast
            failure = error
            box = [(False, str(error) if isinstance(error, HtsrError) else brief(error))]
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    done, value = box[0]
    if not done:
        raise HtsrError(f"rank 0 failed to analyse the weights: {value}")
    return value


def _is_lora_layer(module: torch.nn.Module) -> bool:
    """A PEFT LoRA layer (checked by shape, without importing peft)."""
    return (
        hasattr(module, "base_layer")
        and isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict)
        and callable(getattr(module, "get_delta_weight", None))
    )


@dataclass(frozen=True)
class TrainedLayer:
    """A module with a trainable weight matrix, or a LoRA-adapted module."""

    name: str
    module: torch.nn.Module
    lora: bool

    def base_weight(self) -> torch.Tensor:
        return (self.module.get_base_layer() if self.lora else self.module).weight

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer computes with: W, or W + sum of the active adapters' (alpha/r) B A."""
        with torch.no_grad():
            weight = self.base_weight().detach()
            if self.lora and not self.module.merged:
                for adapter in self.module.active_adapters:
                    if adapter in self.module.lora_A:
                        weight = weight + self.module.get_delta_weight(adapter)
            return weight

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The parameters whose LR follows this layer's factor."""
        return self.module.parameters() if self.lora else self.module.parameters(recurse=False)


def trained_layers(model: torch.nn.Module) -> list[TrainedLayer]:
    """The layers TempBalance balances, in module order (see the module docstring)."""
    layers: list[TrainedLayer] = []
    lora_names: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(lora + ".") for lora in lora_names):
            continue  # base_layer, lora_A.default, ... belong to their adapted module
        if _is_lora_layer(module):
            if any(getattr(module, "use_dora", {}).values()):
                raise HtsrError(f"{name}: DoRA adapters are not supported by the TempBalance callbacks (plain LoRA is)")
            lora_names.append(name)
            if any(parameter.requires_grad for parameter in module.parameters()):
                layers.append(TrainedLayer(name, module, lora=True))
            continue
        weight = module._parameters.get("weight")
        if isinstance(weight, torch.nn.Parameter) and weight.ndim >= 2 and weight.requires_grad:
            layers.append(TrainedLayer(name, module, lora=False))
    return layers


class LiveLayers(Checkpoint):
    """The trained layers' current effective weights, as `<layer>.weight`, each made when the analysis reads it."""

    def __init__(self, layers: list[TrainedLayer]) -> None:
        self.source = "<live training weights>"
        self._layers = {f"{layer.name}.weight": layer for layer in layers}

    def tensors(self) -> list[TensorInfo]:
        infos = []
        for key, layer in self._layers.items():
            weight = layer.base_weight()
            infos.append(TensorInfo(key, tuple(weight.shape), weight.dtype))
        return infos

    def load(self, key: str) -> torch.Tensor:
        if key not in self._layers:
            raise self._missing(key)
        return self._layers[key].effective_weight()

    def close(self) -> None:
        """Nothing to release: the weights belong to the model."""


class LiveTempBalance(TempBalance):
    """`TempBalance` over the trained layers of a model in training, analysed on rank 0 alone."""

    def __init__(self, model: torch.nn.Module, settings: BalanceSettings) -> None:
        self.layers = trained_layers(model)
        if not self.layers:
            raise HtsrError(f"{type(model).__name__} has no trainable weight matrix: there are no learning rates to balance")
        self.device = self.layers[0].base_weight().device.type
        self.seconds = math.nan  # the last recompute's wall time (the analysis and the broadcast)
        # base_lr is unused here: the factors multiply the trainer's scheduled LR
        super().__init__(model, 1.0, settings.map, settings.unit, settings.min_ratio, settings.max_ratio, settings.xmin)

    def compute_factors(self) -> dict[str, float]:
        started = time.perf_counter()
        factors = computed_on_rank_zero(self._factors_here)
        self.seconds = time.perf_counter() - started
        return factors

    def _factors_here(self) -> dict[str, float]:
        settings = AnalyzeSettings(xmin=self.xmin, device=self.device)
        return self.factors_from(analyze(LiveLayers(self.layers), settings, collective=False))

    def layer_of_parameter(self) -> dict[int, str]:
        """id(parameter) -> the layer whose factor its LR follows (BatchNorm follows its conv)."""
        owner: dict[int, str] = {}
        for layer in self.layers:
            for parameter in layer.parameters():
                owner.setdefault(id(parameter), layer.name)
        names = {layer.name for layer in self.layers}
        for name, module in self.model.named_modules():
            partner = bn_partner(name)
            if partner in names:
                for parameter in module.parameters(recurse=False):
                    owner.setdefault(id(parameter), partner)
        return owner


def innermost_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers (accelerate's `AcceleratedOptimizer` is an Optimizer holding one)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise HtsrError(f"{type(optimizer).__name__} is not a torch optimizer (and wraps none)")
    return optimizer


def innermost_scheduler(scheduler: Any) -> Any:
    """The scheduler inside a wrapper (accelerate's `AcceleratedScheduler` holds it as `.scheduler`)."""
    while hasattr(scheduler, "scheduler") and not hasattr(scheduler, "base_lrs"):
        scheduler = scheduler.scheduler
    return scheduler


class ScaledLearningRates:
    """The optimizer's groups split per layer; the scheduler keeps driving the groups it was built with."""

    def __init__(self, optimizer: Any, scheduler: Any | None, layer_of: dict[int, str]) -> None:
        self.optimizer = innermost_optimizer(optimizer)
        self.scheduled = self.optimizer.param_groups  # the scheduler's view: the original groups
        self.parts: list[tuple[dict, str, dict]] = []  # (scheduled group, layer, its sub-group)
        for group in self.scheduled:
            by_layer: dict[str, list[torch.nn.Parameter]] = {}
            for parameter in group["params"]:
                by_layer.setdefault(layer_of.get(id(parameter), DEFAULT_GROUP), []).append(parameter)
            for layer, params in by_layer.items():
                part = {**group, "params": params, UNIT_KEY: layer}
                self.parts.append((group, layer, part))
        self.split = [part for _, _, part in self.parts]
        self.optimizer.param_groups = self.split
        self.factors: dict[str, float] = {}
        if scheduler is not None:
            self._wrap(innermost_scheduler(scheduler))

    def _wrap(self, scheduler: Any) -> None:
        scheduler_step = scheduler.step

        def step(*args: Any, **kwargs: Any) -> Any:
            self.optimizer.param_groups = self.scheduled
            try:
                return scheduler_step(*args, **kwargs)
            finally:
                self.optimizer.param_groups = self.split
                self.apply()

        scheduler.step = step

    def apply(self, factors: dict[str, float] | None = None) -> None:
        """Each sub-group: its group's options as the scheduler left them, lr = factor x scheduled LR."""
        if factors is not None:
            self.factors = factors
        for group, layer, part in self.parts:
            for key, value in group.items():
                if key != "params":
                    part[key] = value
            part["lr"] = self.factors.get(layer, 1.0) * group["lr"]


@dataclass(frozen=True)
class Recompute:
    """One recompute during training: when, the factors, what it cost."""

    step: int
    epoch: int
    factors: dict[str, float]
    seconds: float


class TrainingBalancer:
    """TempBalance or Model Balancing over one training run (both callbacks drive one)."""

    def __init__(self, settings: BalanceSettings) -> None:
        self.settings = settings
        self.history: list[Recompute] = []
        self._balance: LiveTempBalance | None = None
        self._rates: ScaledLearningRates | None = None
        self._last_step = -1

    def start(self, model: torch.nn.Module, optimizer: Any, scheduler: Any | None, step: int) -> None:
        """At train begin: the first factors, the split groups, the wrapped scheduler."""
        self._balance = LiveTempBalance(model, self.settings)
        self._rates = ScaledLearningRates(optimizer, scheduler, self._balance.layer_of_parameter())
        self._record(step, 0)

    def recompute(self, step: int, epoch: int) -> None:
        """New factors from the live weights, applied to the current scheduled LRs."""
        if step == self._last_step:
            return  # done at this step already (micro-batches of one step, an epoch ending on a due step)
        self._balance.factors = self._balance.compute_factors()
        self._record(step, epoch)

    def _record(self, step: int, epoch: int) -> None:
        self._rates.apply(self._balance.factors)
        self._last_step = step
        self.history.append(Recompute(step, epoch, dict(self._balance.factors), self._balance.seconds))

    @property
    def rates(self) -> ScaledLearningRates | None:
        return self._rates


class BalancingCallback:
    """What the Trainer's and Lightning's TempBalance callbacks share: their keyword arguments, the
    balancer they drive, and what they expose (each adds its framework's hooks)."""

    def __init__(
        self,
        method: str = "tempbalance",
        *,
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
        min_ratio: float = 0.5,
        max_ratio: float = 1.5,
        xmin: str = "median",
    ) -> None:
        self._balancer = TrainingBalancer(
            BalanceSettings.from_callback(method, every_n_epochs, every_n_steps, min_ratio, max_ratio, xmin)
        )

    @property
    def history(self) -> list[Recompute]:
        return self._balancer.history

    @property
    def learning_rates(self) -> ScaledLearningRates | None:
        """The split groups and their factors (None before training starts)."""
        return self._balancer.rates
