"""State dicts in memory: a module's own, one a user passes, or one read from
a torch file.

Training scripts wrap the weights (`{"state_dict": ...}` from Lightning,
`{"model": ...}`, `module.` prefixes from DistributedDataParallel,
`_orig_mod.` from `torch.compile`); `unwrap_state_dict` peels those so every
source yields the plain parameter names.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from htsr_cli.checkpoints.base import Checkpoint, TensorInfo
from htsr_cli.errors import HtsrError

CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
PACKED_PARAMS = "_packed_params._packed_params"


def unwrap_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a (possibly wrapped) state dict, in their stored order.

    Non-tensor entries (epoch counters, hyper-parameters, metadata) are dropped.
    """
    while isinstance(obj, Mapping):
        inner = next(
            (obj[name] for name in CONTAINER_KEYS if isinstance(obj.get(name), Mapping)), None
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise HtsrError(
            f"{source}: holds a {type(obj).__name__}, not a state dict; "
            "save the weights with torch.save(model.state_dict(), PATH)"
        )
    tensors = {str(key): value for key, value in obj.items() if isinstance(value, torch.Tensor)}
    tensors.update(_packed_weights(obj, tensors))
    if not tensors:
        found = ", ".join(str(key) for key in list(obj)[:8]) or "nothing"
        raise HtsrError(
            f"{source}: no tensors found (top-level entries: {found}); "
            "expected a state dict or a dict with a 'state_dict' or 'model' entry"
        )
    return _strip_wrapper_prefixes(tensors)


def _packed_weights(obj: Mapping, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The quantized weights of dynamically quantized modules, as `<module>.weight`.

    `torch.ao` quantized Linear modules store `(weight, bias)` as a tuple under
    `<module>._packed_params._packed_params`; the weight is a quantized tensor,
    so it becomes a skipped layer (reason "quantized") rather than vanishing.
    """
    found = {}
    for key, value in obj.items():
        key = str(key)
        if not key.endswith(PACKED_PARAMS) or not isinstance(value, (tuple, list)) or not value:
            continue
        weight = value[0]
        name = key[: -len(PACKED_PARAMS)] + "weight"
        if isinstance(weight, torch.Tensor) and name not in tensors:
            found[name] = weight
    return found


def _strip_wrapper_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A wrapper prefixes every key; a prefix on only some keys is a real module name.
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) and len(key) > len(prefix) for key in tensors):
                tensors = {key[len(prefix) :]: value for key, value in tensors.items()}
                stripped = True
    return tensors


class StateDictCheckpoint(Checkpoint):
    """Tensors already in a dict (in memory, or memory-mapped from a torch file),
    listed in the dict's own order, which is the module registration order."""

    def __init__(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        self.source = source
        self._tensors = tensors

    @classmethod
    def from_object(cls, obj: torch.nn.Module | Mapping[str, torch.Tensor]) -> StateDictCheckpoint:
        if isinstance(obj, torch.nn.Module):
            source = f"<in-memory {type(obj).__name__}>"
            return cls(unwrap_state_dict(obj.state_dict(keep_vars=False), source), source)
        source = "<in-memory state dict>"
        return cls(unwrap_state_dict(obj, source), source)

    def tensors(self) -> list[TensorInfo]:
        return [
            TensorInfo(key, tuple(tensor.shape), tensor.dtype, unreadable=_unsupported(tensor))
            for key, tensor in self._tensors.items()
        ]

    def load(self, key: str) -> torch.Tensor:
        if key not in self._tensors:
            raise self._missing(key)
        tensor = self._tensors[key]
        if tensor.is_meta:  # listing shapes is fine; there is no data to analyse
            raise HtsrError(
                f"{self.source}: the weights are not materialised ({key!r} is on the meta device); "
                "load real weights first (e.g. model.to_empty(device=...) and load_state_dict)"
            )
        return tensor

    def close(self) -> None:
        self._tensors = {}


def _unsupported(tensor: torch.Tensor) -> str | None:
    """Why a tensor cannot be read as a dense matrix, or None."""
    if tensor.layout != torch.strided:
        return f"sparse tensor ({str(tensor.layout).removeprefix('torch.')}), not supported"
    return None
