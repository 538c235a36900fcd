"""Weight-normalised layers: their effective weight W = g v / ||v||, named as the module's weight.

`torch.nn.utils.parametrizations.weight_norm` stores a layer's weight as two
tensors, `<module>.parametrizations.weight.original0` (the magnitude g) and
`.original1` (the direction v); the older `torch.nn.utils.weight_norm` as
`<module>.weight_g` and `<module>.weight_v` (FCPE's and many vocoders' and OCR
models' checkpoints; `weight_hh_l0_g` for an LSTM's weight). Neither name ends
in `weight`, so without this such layers would vanish from the analysis. The
wrapper lists one `<module>.weight` in place of the pair and composes it on
load as torch does (`torch._weight_norm`: the norm over every dimension but the
one g keeps, which the shapes give), on the solver's device.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from htsr_cli.checkpoints.base import Checkpoint, RelistedCheckpoint, TensorInfo

# Magnitude keys: the parametrization's `original0`, and the old API's `<name>_g` for
# any weight parameter (`weight_g`, an LSTM's `weight_hh_l0_g`); the direction is
# the same key with `original1` / `_v`, and the weight they stand for `<module>.<name>`.
_PARAMETRIZED = re.compile(r"^(?P<module>(?:.*\.)?)parametrizations\.(?P<name>[^.]*weight[^.]*)\.original0$")
_OLD_STYLE = re.compile(r"^(?P<module>(?:.*\.)?)(?P<name>[^.]*weight[^.]*)_g$")


def norm_dim(g_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> int | None:
    """The dimension weight_norm kept (g's one non-1 axis), -1 for a whole-tensor norm, None if not weight norm."""
    if len(g_shape) != len(v_shape) and not (len(g_shape) == 0 and v_shape):
        return None
    kept = [axis for axis, size in enumerate(g_shape) if size != 1]
    if not kept:
        return -1
    if len(kept) == 1 and g_shape[kept[0]] == v_shape[kept[0]]:
        return kept[0]
    return None


class WeightNormCheckpoint(RelistedCheckpoint):
    """`inner` with every weight-norm pair replaced by the effective weight it stands for."""

    def __init__(self, inner: Checkpoint, parts: dict[str, tuple[str, str, int]]) -> None:
        super().__init__(inner)
        self._parts = parts  # effective key -> (g key, v key, dim)
        self._hidden = {key for g, v, _ in parts.values() for key in (g, v)}

    def relist(self, infos: list[TensorInfo]) -> list[TensorInfo]:
        direction = {v: key for key, (_, v, _) in self._parts.items()}
        out = []
        for info in infos:
            if info.key in direction:
                key = direction[info.key]
                label = f"weight_norm {info.storage_label}"
                out.append(TensorInfo(key, info.shape, info.dtype, label, info.unreadable))
            elif info.key not in self._hidden:
                out.append(info)
        return out

    def load_for(self, key: str, move: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if key not in self._parts:
            return self._inner.load_for(key, move)
        g_key, v_key, dim = self._parts[key]
        magnitude = self._inner.load_for(g_key, move)
        direction = self._inner.load_for(v_key, move)
        return torch._weight_norm(direction, magnitude.to(direction.dtype), dim)


def with_effective_weights(checkpoint: Checkpoint) -> Checkpoint:
    """`checkpoint`, wrapped when it stores weight-normalised layers (else unchanged)."""
    infos = {info.key: info for info in checkpoint.stored()}
    parts: dict[str, tuple[str, str, int]] = {}
    for key, info in infos.items():
        if match := _PARAMETRIZED.match(key):
            v_key = key.removesuffix("original0") + "original1"
        elif match := _OLD_STYLE.match(key):
            v_key = key.removesuffix("_g") + "_v"
        else:
            continue
        effective = match["module"] + match["name"]
        direction = infos.get(v_key)
        if direction is None or effective in infos or not direction.dtype.is_floating_point:
            continue
        dim = norm_dim(info.shape, direction.shape)
        if dim is not None:
            parts[effective] = (key, v_key, dim)
    return WeightNormCheckpoint(checkpoint, parts) if parts else checkpoint
