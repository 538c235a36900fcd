"""An in-memory transformers model, keyed as its `save_pretrained` directory would be.

transformers 5 holds some weights in another layout than the files it writes:
Qwen3-MoE and Mixtral keep every expert of a layer in one fused parameter
(`mlp.experts.gate_up_proj` [E, 2I, H]), while `save_pretrained` writes one
matrix per expert (`mlp.experts.3.gate_proj.weight`, and for Mixtral
`block_sparse_moe.experts.3.w1.weight`). It reverts its own conversion mapping
when saving (`core_model_loading.revert_weight_conversion`); htsr runs that
same reversion, so `analyze(model)` reports the layers `analyze(saved_dir)`
reports, with the same names and the same numbers.

The reversion first runs on meta tensors (no data) to learn the saved names
and shapes. A saved tensor that is a view of one held tensor (a renamed
weight, one expert of down_proj) is served as that view of the real tensor. A
saved tensor transformers computes (the halves of a fused gate_up) is made when
asked, by reverting the one held tensor it comes from; only one such tensor's
outputs are kept at a time. Held tensors whose reversion needs others with them
(a concatenation) are analysed as they are held.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from htsr_cli.checkpoints.base import Checkpoint, TensorInfo
from htsr_cli.checkpoints.order import natural_order, order_by_reference

Revert = Callable[[torch.nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def is_transformers_model(obj: object) -> bool:
    """A `transformers.PreTrainedModel` (checked without importing transformers: a model exists only if it is)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(obj, getattr(transformers, "PreTrainedModel", ()))


def _reverter() -> Revert | None:
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4 has no conversion mapping: models hold what they save
        return None
    return revert_weight_conversion


class TransformersModelCheckpoint(Checkpoint):
    """The tensors `model.save_pretrained` would write, served from the model's own memory."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.source = f"<in-memory {type(model).__name__}>"
        self.model_type = getattr(model.config, "model_type", None)
        self._model = model
        self._held = model.state_dict()
        self._revert = _reverter()
        # saved name -> (held key, size, stride, storage offset) of a view, or held key of a computed tensor
        self._views: dict[str, tuple[str, tuple[int, ...], tuple[int, ...], int]] = {}
        self._computed: dict[str, str] = {}
        self._infos: dict[str, TensorInfo] = {}
        self._cache: tuple[str, dict[str, torch.Tensor]] | None = None
        self._map_saved_layout()
        reference = list(self._held)
        keys = order_by_reference(natural_order(list(self._infos)), reference, model.base_model_prefix or "")
        self._ordered = [self._infos[key] for key in keys or self._infos]

    def _map_saved_layout(self) -> None:
        meta = {
            key: torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device="meta")
            for key, t in self._held.items()
        }
        saved: dict[str, torch.Tensor] = {}
        if self._revert is not None:
            try:
                saved = self._revert(self._model, dict(meta))
            except Exception:  # a conversion transformers cannot replay on meta tensors: keep the held layout
                saved = {}
        held_of = {id(tensor): key for key, tensor in meta.items()}
        computed: dict[str, torch.Tensor] = {}
        for name, tensor in saved.items():
            key = held_of.get(id(tensor)) or (held_of.get(id(tensor._base)) if tensor._base is not None else None)
            if key is not None:
                self._views[name] = (key, tuple(tensor.size()), tuple(tensor.stride()), tensor.storage_offset())
            else:
                computed[name] = tensor
        viewed = {key for key, *_ in self._views.values()}
        for key in self._held:
            if key in viewed or not computed:
                continue
            alone = self._revert(self._model, {key: meta[key]})
            if alone and all(name in computed and computed[name].shape == t.shape for name, t in alone.items()):
                self._computed.update(dict.fromkeys(alone, key))
        # Stored order: held tensor by held tensor, so one computed group is made once and read through.
        for key, tensor in self._held.items():
            names = [name for name, (held, *_) in self._views.items() if held == key]
            names += [name for name, held in self._computed.items() if held == key]
            if not names and key not in self._views and key not in self._computed:
                names = [key]  # not reverted (or needed with others): analysed as held
            for name in names:
                shaped = saved[name] if name in saved else tensor
                self._infos[name] = TensorInfo(name, tuple(shaped.shape), shaped.dtype)

    def tensors(self) -> list[TensorInfo]:
        return list(self._ordered)

    def stored(self) -> list[TensorInfo]:
        return list(self._infos.values())

    def load(self, key: str) -> torch.Tensor:
        if key in self._views:
            held, size, stride, offset = self._views[key]
            tensor = self._held[held]
            return tensor.as_strided(size, stride, tensor.storage_offset() + offset)
        if key in self._computed:
            held = self._computed[key]
            if self._cache is None or self._cache[0] != held:
                self._cache = None  # free the previous group before making the next
                self._cache = (held, self._revert(self._model, {held: self._held[held]}))
            return self._cache[1][key]
        if key in self._infos:
            return self._held[key]
        raise self._missing(key)

    def close(self) -> None:
        self._held, self._cache = {}, None
