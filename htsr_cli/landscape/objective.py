"""What every landscape metric needs besides the weights: how to run the model on a batch, the loss,
and what counts as a mistake; and the data as a re-iterable stream of (inputs, targets) batches.

Every metric averages over samples the way PyHessian averages Hessian-vector products: a batch's
mean loss (or product) is weighted by its sample count, so the result does not depend on how the
data is cut into batches (up to float rounding).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from htsr_cli.errors import InvalidSetting
from htsr_cli.settings import ProgressCallback

Batch = tuple[Any, Tensor]  # (inputs: a tensor, or a mapping of keyword tensors, targets)
LossFunction = Callable[[Tensor, Tensor], Tensor]  # (outputs, targets) -> the batch's mean loss


def model_outputs(model: nn.Module, inputs: Any) -> Tensor:
    """The model's logits: `model(inputs)`, or `model(**inputs)` for keyword inputs; a
    transformers output object gives its `.logits`."""
    output = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    logits = getattr(output, "logits", output)
    if not isinstance(logits, Tensor):
        raise TypeError(f"the model returned {type(output).__name__}, not a tensor of logits")
    return logits


def at_least_float32(logits: Tensor) -> Tensor:
    """Half-precision logits are scored in float32; float32 and float64 as they are."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def classification_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of class logits [B, C] against class indices [B]."""
    return nn.functional.cross_entropy(at_least_float32(logits), targets)


def classification_mistakes(logits: Tensor, targets: Tensor) -> tuple[int, int]:
    """(wrong top-1 predictions, predictions made) of class logits [B, C] against indices [B]."""
    return int((logits.argmax(-1) != targets).sum()), int(targets.numel())


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of token t+1 given tokens <= t: logits [B, L, V], token ids [B, L]."""
    return nn.functional.cross_entropy(at_least_float32(logits[:, :-1]).flatten(0, 1), targets[:, 1:].flatten())


def next_token_mistakes(logits: Tensor, targets: Tensor) -> tuple[int, int]:
    predicted = logits[:, :-1].argmax(-1)
    return int((predicted != targets[:, 1:]).sum()), int(targets[:, 1:].numel())


def samples_in(targets: Tensor) -> int:
    """How many samples a batch holds: its first dimension."""
    return int(targets.shape[0])


def next_token_count(targets: Tensor) -> int:
    """How many predictions a window batch [B, L] scores: B * (L - 1) tokens."""
    return int(targets.shape[0] * (targets.shape[1] - 1))


@dataclass(frozen=True)
class Objective:
    """How a model is scored on a batch. `loss` is the batch MEAN; `count` the number of terms in
    that mean (the weight of the batch in an average over the data)."""

    loss: Callable[[Tensor, Tensor], Tensor] = classification_loss
    forward: Callable[[nn.Module, Any], Tensor] = model_outputs
    mistakes: Callable[[Tensor, Tensor], tuple[int, int]] = classification_mistakes
    count: Callable[[Tensor], int] = samples_in
    name: str = "classification"


CLASSIFICATION = Objective()
NEXT_TOKEN = Objective(
    loss=next_token_loss, mistakes=next_token_mistakes, count=next_token_count, name="next-token"
)


def as_objective(loss: Objective | LossFunction | None) -> Objective:
    """A plain loss function (outputs, targets) -> mean loss becomes an Objective with the
    classification defaults for everything else."""
    if loss is None:
        return CLASSIFICATION
    if isinstance(loss, Objective):
        return loss
    return Objective(loss=loss, name=getattr(loss, "__name__", "custom"))


class Batches:
    """A re-iterable stream of batches, cut at `max_batches`, moved to `device` when one is given.

    Metrics pass over the data many times (one pass per Hessian-vector product), so a one-shot
    generator is refused: it would be empty on the second pass."""

    def __init__(self, source: Iterable[Batch], max_batches: int | None = None, device: torch.device | str | None = None):
        if iter(source) is source:
            raise InvalidSetting("batches", type(source).__name__, "must be re-iterable (a list or DataLoader), not a one-shot iterator")
        if max_batches is not None and max_batches < 1:
            raise InvalidSetting("max_batches", max_batches, "must be at least 1")
        self.source, self.max_batches = source, max_batches
        self.device = None if device is None else torch.device(device)

    def __iter__(self) -> Iterator[Batch]:
        for inputs, targets in itertools.islice(self.source, self.max_batches):
            if self.device is None:
                yield inputs, targets
            else:
                yield to_device(inputs, self.device), targets.to(self.device)

    def __len__(self) -> int:
        try:
            total = len(self.source)  # type: ignore[arg-type]
        except TypeError:
            total = sum(1 for _ in itertools.islice(self.source, self.max_batches))
        return total if self.max_batches is None else min(total, self.max_batches)


def to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, Mapping):
        return {key: value.to(device) for key, value in inputs.items()}
    return inputs.to(device)


def as_batches(source: Iterable[Batch] | Batches) -> Batches:
    """The library's functions take any re-iterable of (inputs, targets), or Batches."""
    return source if isinstance(source, Batches) else Batches(source)


def mean_loss_and_error(
    model: nn.Module, batches: Batches, objective: Objective, parameters: dict[str, Tensor] | None = None
) -> tuple[float, float]:
    """(mean loss, error in percent) of `model` over the data, with no gradients; with `parameters`
    (by name) in place of the model's own when given."""
    total_loss, terms, wrong, predicted = 0.0, 0, 0, 0
    with torch.no_grad():
        for inputs, targets in batches:
            logits = objective.forward(model, inputs) if parameters is None else call_with(model, parameters, objective, inputs)
            count = objective.count(targets)
            total_loss += float(objective.loss(logits, targets)) * count
            terms += count
            batch_wrong, batch_predicted = objective.mistakes(logits, targets)
            wrong, predicted = wrong + batch_wrong, predicted + batch_predicted
    if terms == 0:
        raise InvalidSetting("batches", "empty", "the data holds no batch")
    return total_loss / terms, 100.0 * wrong / max(predicted, 1)


def call_with(model: nn.Module, parameters: dict[str, Tensor], objective: Objective, inputs: Any) -> Tensor:
    """The objective's forward pass with `parameters` (by name) in place of the model's own;
    the model's other parameters and buffers are used as they are."""
    scored = _Scored(model, objective.forward)
    return torch.func.functional_call(scored, {f"model.{name}": value for name, value in parameters.items()}, (inputs,))


class _Scored(nn.Module):
    """The model behind the objective's forward pass, so torch.func can swap its tensors by name."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, Any], Tensor]):
        super().__init__()
        self.model, self.run = model, forward

    def forward(self, inputs: Any) -> Tensor:
        return self.run(self.model, inputs)


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The parameters the metrics differentiate: those that require a gradient, by name."""
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
