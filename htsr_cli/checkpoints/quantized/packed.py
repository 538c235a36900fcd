"""One quantized weight as one logical tensor, and a checkpoint that shows its
packed tensors that way.

A format's finder groups a weight's stored parts (packed codes, scales, zero
points, indices, quant maps) into a `PackedWeight`: the logical tensor's
`TensorInfo` (its unpacked shape, float32, and how it was stored), the stored
keys of its parts, and a pure decoder from those parts to the matrix.
`QuantizedCheckpoint` lists the logical tensor where its main part was and
never lists the other parts, so scales and zero points are never layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from htsr_cli.checkpoints.base import Checkpoint, RelistedCheckpoint, TensorInfo
from htsr_cli.errors import HtsrError

Decoder = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


class ImpossibleParts(HtsrError):
    """A packed weight whose parts contradict each other (a scale of the wrong rank, a g_idx
    naming a group that does not exist, a shape its packed data cannot hold): a damaged or
    crafted file, refused before anything is allocated for it. The message names the tensor."""


@dataclass(frozen=True)
class PackedWeight:
    """A weight stored in parts; `decode(parts)` gives its logical float32 tensor."""

    info: TensorInfo  # the logical tensor: key, unpacked shape, float32, storage label
    main: str  # the stored key whose place in listings the logical tensor takes
    parts: Mapping[str, str]  # role ("qweight", "scales", ...) -> stored key, every part to move
    decode: Decoder | None  # None when info.unreadable says why it cannot be decoded
    hidden: tuple[str, ...] = field(default=())  # stored keys that belong to it but are not decoded


def unreadable(key: str, main: str, shape: tuple[int, ...], storage: str, reason: str,
               parts: Iterable[str] = ()) -> PackedWeight:
    """A weight whose parts were found but cannot be decoded: listed, and skipped with `reason`."""
    info = TensorInfo(key, shape, torch.float32, storage, unreadable=reason)
    return PackedWeight(info, main, {}, None, hidden=tuple(parts))


class QuantizedCheckpoint(RelistedCheckpoint):
    """`inner`'s tensors with each packed weight shown as one logical tensor."""

    def __init__(self, inner: Checkpoint, weights: list[PackedWeight], format_info: dict[str, object]):
        super().__init__(inner)
        self._format = format_info
        self._by_main = {weight.main: weight for weight in weights}
        self._by_key = {weight.info.key: weight for weight in weights}
        self._parts = {key for weight in weights for key in (weight.main, *weight.parts.values(), *weight.hidden)}

    def relist(self, infos: list[TensorInfo]) -> list[TensorInfo]:
        listed = []
        for info in infos:
            if info.key in self._by_main:
                listed.append(self._by_main[info.key].info)
            elif info.key not in self._parts:
                listed.append(info)
        return listed

    def load_for(self, key: str, move: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """A plain tensor as stored; a packed weight dequantized where `move` puts its parts."""
        weight = self._by_key.get(key)
        if weight is None:
            if key in self._parts:
                raise self._missing(key)
            return move(self._inner.load(key))
        if weight.decode is None:
            raise HtsrError(f"{self.source}: {key}: {weight.info.unreadable}")
        # Only the packed parts travel; the float matrix is made where they arrive.
        parts = {role: move(self._inner.load(stored)) for role, stored in weight.parts.items()}
        with torch.no_grad():
            try:
                return weight.decode(parts)
            except ImpossibleParts as error:
                raise HtsrError(f"{self.source}: {error}") from None

    def format_info(self) -> dict[str, object]:
        return dict(self._format)


@dataclass(frozen=True)
class StoredTensors:
    """What a format's finder looks at: the stored listing, the checkpoint's
    `quantization_config` ({} when it has none), and a reader for small metadata tensors."""

    infos: Mapping[str, TensorInfo]
    config: Mapping[str, object]
    read_small: Callable[[str], torch.Tensor]
