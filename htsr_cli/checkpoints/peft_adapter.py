"""PEFT LoRA adapters: a directory with `adapter_config.json` and `adapter_model.safetensors`
(or `adapter_model.bin`, read by the restricted torch reader).

By default each adapted module is one layer, its low-rank update
ΔW = scale · B·A (scale = lora_alpha / r, or lora_alpha / sqrt(r) with
`use_rslora`; `rank_pattern` and `alpha_pattern` give per-module r and alpha).
The layer is listed as `<module>.weight` but loaded as the small matrix
C = scale · R_B·A, where B = Q_B R_B is B's thin QR factorisation: C has the
same nonzero singular values as ΔW (algorithms.md, "LoRA updates"), so the
solver forms an r x r Gram instead of a dense product. Modules the config
lists in `modules_to_save` are stored whole in the adapter and are listed as
they are (they replace the base's).

`sources.MergedAdapter(adapter, base)` opens as the fine-tuned model itself: every tensor of
the base, with each adapted weight loaded as W + ΔW (dense, one matrix at a
time; DoRA's magnitudes applied: W' = m · (W + ΔW) / ||W + ΔW|| per output
row) and each `modules_to_save` tensor taken from the adapter.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from htsr_cli.checkpoints.base import Checkpoint, RelistedCheckpoint, TensorInfo
from htsr_cli.checkpoints.order import module_order
from htsr_cli.checkpoints.sharded import ShardedCheckpoint
from htsr_cli.checkpoints.sources import ADAPTER_CONFIG
from htsr_cli.errors import HtsrError, brief
from htsr_cli.io import read_document

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# PEFT saves every key under the wrapper's path to the base model.
PEFT_PREFIX = "base_model.model."
# A rank above this is no LoRA (a hostile or corrupt config); it would also be refused by the shapes.
MAX_RANK = 1 << 20
_LORA_FACTOR = re.compile(r"^(?P<module>.+)\.(?:lora_(?P<linear>[AB])\.weight|lora_embedding_(?P<embedding>[AB]))$")
_MAGNITUDE = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.weight)?$")
_LORA_PART = re.compile(r"\.lora_[A-Za-z_]+(\.|$)")  # lora_B.bias and other adapter-only tensors


@dataclass(frozen=True)
class AdapterConfig:
    """What htsr uses of `adapter_config.json`."""

    r: int
    lora_alpha: float
    use_rslora: bool
    use_dora: bool
    fan_in_fan_out: bool
    target_modules: tuple[str, ...] | str | None  # names (suffix match) or one regex (full match)
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    modules_to_save: tuple[str, ...]

    def rank_of(self, module: str) -> int:
        return _pattern_value(self.rank_pattern, module, self.r)

    def scale_of(self, module: str) -> float:
        """alpha / r, or alpha / sqrt(r) with rank-stabilised LoRA (rsLoRA)."""
        rank = self.rank_of(module)
        alpha = _pattern_value(self.alpha_pattern, module, self.lora_alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    def targets(self, module: str) -> bool:
        """Whether `target_modules` names `module` ("all-linear" and a missing list name every module)."""
        if self.target_modules is None or self.target_modules == "all-linear":
            return True
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, module) is not None
        return any(module == name or module.endswith("." + name) for name in self.target_modules)

    def saves(self, key: str) -> bool:
        """Whether the tensor `key` belongs to a module of `modules_to_save` (stored whole in the adapter)."""
        module = key.rsplit(".", 1)[0]
        return any(module == name or module.endswith("." + name) for name in self.modules_to_save)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rule: a pattern key applies to the module whose name ends in it (as a regex, at a dot)."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{key})", module):
            return value
    return default


def read_adapter_config(directory: Path, source: str) -> AdapterConfig:
    """The config, checked: one line naming the field for anything PEFT could not have written."""
    where = f"{source}: {ADAPTER_CONFIG}"
    try:
        data = json.loads(read_document(directory / ADAPTER_CONFIG))
    except (ValueError, RecursionError) as error:
        raise HtsrError(f"{where} is not valid JSON ({brief(error)})") from None
    if not isinstance(data, dict):
        raise HtsrError(f"{where} is not a JSON object")
    if data.get("peft_type", "LORA") != "LORA":
        raise HtsrError(f"{where}: peft_type {data.get('peft_type')!r} is not supported (only LORA adapters)")

    def rank(value: object, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RANK:
            raise HtsrError(f"{where}: {field} must be an integer from 1 to {MAX_RANK}, not {value!r}")
        return value

    def number(value: object, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value == 0:
            raise HtsrError(f"{where}: {field} must be a finite nonzero number, not {value!r}")
        return float(value)

    def flag(field: str) -> bool:
        value = data.get(field) or False
        if not isinstance(value, bool):
            raise HtsrError(f"{where}: {field} must be true or false, not {value!r}")
        return value

    def patterns(field: str, check: Callable[[object, str], object]) -> dict:
        value = data.get(field) or {}
        if not isinstance(value, dict):
            raise HtsrError(f"{where}: {field} must be an object of module pattern -> value")
        for key in value:
            try:
                re.compile(key)
            except re.error as error:
                raise HtsrError(f"{where}: {field} key {key!r} is not a valid pattern ({error})") from None
        return {key: check(item, f"{field}[{key!r}]") for key, item in value.items()}

    def names(field: str) -> tuple[str, ...] | str | None:
        value = data.get(field)
        if value is None or (isinstance(value, str) and field == "target_modules"):
            if isinstance(value, str):
                try:
                    re.compile(value)
                except re.error as error:
                    raise HtsrError(f"{where}: {field} {value!r} is not a valid pattern ({error})") from None
            return value
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise HtsrError(f"{where}: {field} must be a list of module names")
        return tuple(value)

    return AdapterConfig(
        r=rank(data.get("r", 8), "r"),
        lora_alpha=number(data.get("lora_alpha", 8), "lora_alpha"),
        use_rslora=flag("use_rslora"),
        use_dora=flag("use_dora"),
        fan_in_fan_out=flag("fan_in_fan_out"),
        target_modules=names("target_modules"),
        rank_pattern=patterns("rank_pattern", rank),
        alpha_pattern=patterns("alpha_pattern", number),
        modules_to_save=names("modules_to_save") or (),
    )


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: where its factors are stored and what they multiply out to."""

    name: str  # the base module's path
    a_key: str  # keys in the adapter file
    b_key: str
    magnitude_key: str | None  # DoRA
    rank: int
    scale: float
    embedding: bool  # lora_embedding_A/B: the update is (B A)^T, shaped like the embedding table
    weight_shape: tuple[int, ...]  # the base weight's shape the factors imply
    core_shape: tuple[int, ...]  # the shape of `low_rank_core`: [min(rows of B, r), *A's other axes]


def low_rank_core(b: torch.Tensor, a: torch.Tensor, scale: float) -> torch.Tensor:
    """scale · R_B·A, in float64: the same nonzero singular values as scale · B·A, without forming B·A.

    b: [out, r] (a conv's [out, r, 1, ...]); a: [r, in, *kernel] -> [min(out, r), in, *kernel].
    With B = Q_B R_B (Q_B's columns orthonormal), B·A = Q_B (R_B A), and
    multiplying by Q_B keeps singular values (algorithms.md, "LoRA updates").
    Each kernel position of a conv is such a product with the same B, so the
    slices htsr pools keep theirs too.
    """
    b = b.reshape(b.shape[0], b.shape[1]).to(torch.float64)
    r_b = torch.linalg.qr(b, mode="reduced").R  # [min(out, r), r]
    a = a.to(torch.float64)
    core = (scale * r_b) @ a.reshape(a.shape[0], -1)
    return core.reshape(r_b.shape[0], *a.shape[1:])


def dense_update(module: LoraModule, b: torch.Tensor, a: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """ΔW = scale · B·A in float64, shaped like the base weight (a conv's [out, in, *kernel])."""
    b, a = b.to(torch.float64), a.to(torch.float64)
    product = (module.scale * b.reshape(b.shape[0], b.shape[1])) @ a.reshape(a.shape[0], -1)
    if module.embedding:
        return product.T
    update = product.reshape(b.shape[0], *a.shape[1:])
    return update.T if fan_in_fan_out and update.dim() == 2 else update


def merged_weight(
    weight: torch.Tensor, update: torch.Tensor, magnitude: torch.Tensor | None, module: LoraModule, fan_in_fan_out: bool
) -> torch.Tensor:
    """W + ΔW in float64, with DoRA's magnitude m: m · (W + ΔW) / ||W + ΔW||, the norm per output unit.

    PEFT's norms: a linear layer's per output row (over its inputs), an
    embedding's per embedding dimension (over the vocabulary), a conv's per
    output channel.
    """
    merged = weight.to(torch.float64) + update
    if magnitude is None:
        return merged
    magnitude = magnitude.to(torch.float64)
    if module.embedding:
        return merged * (magnitude / merged.norm(dim=0))[None, :]
    if fan_in_fan_out and merged.dim() == 2:
        return merged * (magnitude.reshape(-1) / merged.norm(dim=0))[None, :]
    dims = tuple(range(1, merged.dim()))
    norm = torch.linalg.vector_norm(merged, dim=dims, keepdim=True)
    return merged * (magnitude.reshape(norm.shape) / norm)


def _weight_file(directory: Path, source: str) -> Path:
    for name in ADAPTER_FILES:
        if (directory / name).is_file():
            return directory / name
    raise HtsrError(f"{source}: an adapter directory needs {' or '.join(ADAPTER_FILES)} beside {ADAPTER_CONFIG}")


def _modules(config: AdapterConfig, stored: list[TensorInfo], source: str) -> tuple[list[LoraModule], list[TensorInfo]]:
    """The adapted modules, checked against the config, and the tensors saved whole (modules_to_save)."""
    factors: dict[str, dict[str, TensorInfo]] = {}
    kinds: dict[str, bool] = {}
    magnitudes: dict[str, str] = {}
    whole: list[TensorInfo] = []
    for info in stored:
        key = info.key.removeprefix(PEFT_PREFIX)
        if match := _LORA_FACTOR.match(key):
            side = match["linear"] or match["embedding"]
            factors.setdefault(match["module"], {})[side] = info
            kinds[match["module"]] = match["embedding"] is not None
        elif match := _MAGNITUDE.match(key):
            magnitudes[match["module"]] = info.key
        elif not _LORA_PART.search(key):
            whole.append(TensorInfo(key, info.shape, info.dtype, info.storage, info.unreadable))
    modules = []
    for name, pair in factors.items():
        if set(pair) != {"A", "B"}:
            missing = ({"A", "B"} - set(pair)).pop()
            raise HtsrError(f"{source}: module {name} has no lora_{missing} tensor")
        a, b = pair["A"], pair["B"]
        if not config.targets(name):
            raise HtsrError(f"{source}: module {name} has LoRA tensors but target_modules in {ADAPTER_CONFIG} does not name it")
        rank = config.rank_of(name)
        embedding = kinds[name]
        shapes_agree = (
            len(b.shape) >= 2 and len(a.shape) >= 2 and a.shape[0] == b.shape[1] == rank
            and all(size == 1 for size in b.shape[2:])
            and (len(b.shape) == 2 or len(b.shape) == len(a.shape))
            and not (embedding and (len(a.shape) != 2 or len(b.shape) != 2))
        )
        if not shapes_agree:
            raise HtsrError(
                f"{source}: module {name}: r={rank} in {ADAPTER_CONFIG} does not match its factors "
                f"(lora_A {list(a.shape)}, lora_B {list(b.shape)})"
            )
        if not (a.dtype.is_floating_point and b.dtype.is_floating_point):
            raise HtsrError(f"{source}: module {name}: LoRA factors must be floating point, not {a.dtype}")
        magnitude = magnitudes.get(name) if config.use_dora else None
        if config.use_dora:
            if magnitude is None:
                raise HtsrError(f"{source}: use_dora is set but module {name} has no lora_magnitude_vector")
            size = math.prod(next(info.shape for info in stored if info.key == magnitude))
            if size != b.shape[0]:
                raise HtsrError(f"{source}: module {name}: its DoRA magnitude has {size} entries, its update {b.shape[0]} outputs")
        if embedding:
            weight_shape = (a.shape[1], b.shape[0])
        elif len(a.shape) == 2 and config.fan_in_fan_out:
            weight_shape = (a.shape[1], b.shape[0])
        else:
            weight_shape = (b.shape[0], *a.shape[1:])
        modules.append(LoraModule(
            name, a.key, b.key, magnitude, rank, config.scale_of(name),
            embedding, tuple(weight_shape), (min(b.shape[0], rank), *a.shape[1:]),
        ))
    if not modules and not whole:
        raise HtsrError(f"{source}: the adapter holds no LoRA factors")
    # Biases are saved beside the factors with bias="all" or "lora_only"; anything else must be a saved module's.
    unsaved = [info.key for info in whole if not config.saves(info.key) and not info.key.endswith("bias")]
    if unsaved:
        raise HtsrError(
            f"{source}: {unsaved[0]} is neither a LoRA factor nor in modules_to_save of {ADAPTER_CONFIG}"
        )
    return modules, whole


class PeftAdapter:
    """An adapter directory, read: its config, its file and its adapted modules (no tensor data)."""

    def __init__(self, directory: Path, source: str) -> None:
        self.source = source
        self.config = read_adapter_config(directory, source)
        self.file = ShardedCheckpoint(source, [_weight_file(directory, source)], sorted_storage=False)
        try:
            self.modules, self.whole = _modules(self.config, self.file.stored(), source)
        except BaseException:
            self.file.close()
            raise
        self._stored_key = {info.key.removeprefix(PEFT_PREFIX): info.key for info in self.file.stored()}

    def factors(self, module: LoraModule) -> tuple[torch.Tensor, torch.Tensor]:
        return self.file.load(module.b_key), self.file.load(module.a_key)

    def load_whole(self, key: str) -> torch.Tensor:
        """A tensor of `modules_to_save`, by its base key (PEFT's prefix removed)."""
        return self.file.load(self._stored_key[key])


class AdapterCheckpoint(Checkpoint):
    """The adapter alone: each adapted module's update ΔW, as its small core (see `low_rank_core`)."""

    def __init__(self, directory: Path, source: str) -> None:
        self.source = source
        self._adapter = PeftAdapter(directory, source)
        self._modules = {f"{module.name}.weight": module for module in self._adapter.modules}

    def tensors(self) -> list[TensorInfo]:
        listed = {}
        for key, module in self._modules.items():
            shape = "x".join(str(size) for size in module.weight_shape)
            listed[key] = TensorInfo(key, module.core_shape, torch.float64, f"lora r={module.rank} of {shape}")
        listed.update((info.key, info) for info in self._adapter.whole)
        safetensors = self._adapter.file.paths[0].suffix == ".safetensors"  # keys sorted, not in module order
        return [listed[key] for key in module_order(list(listed), config_dir=None, sorted_storage=safetensors)]

    def load(self, key: str) -> torch.Tensor:
        module = self._modules.get(key)
        if module is None:
            if any(info.key == key for info in self._adapter.whole):
                return self._adapter.load_whole(key)
            raise self._missing(key)
        b, a = self._adapter.factors(module)
        return low_rank_core(b, a, module.scale)

    def listing_reads(self) -> str:
        return f"adapter_config.json; {self._adapter.file.listing_reads()}"

    def close(self) -> None:
        self._adapter.file.close()


class MergedCheckpoint(RelistedCheckpoint):
    """The base with the adapter merged in: adapted weights are W + ΔW, saved modules the adapter's."""

    def __init__(self, base: Checkpoint, adapter: PeftAdapter, source: str) -> None:
        super().__init__(base)
        self.source = source
        self._adapter = adapter
        self._modules = {f"{module.name}.weight": module for module in adapter.modules}
        self._whole = {info.key: info for info in adapter.whole}
        base_infos = {info.key: info for info in base.stored()}
        for key, module in self._modules.items():
            info = base_infos.get(key)
            if info is None:
                raise HtsrError(f"{source}: the adapter adapts {module.name}, but the base has no tensor {key}")
            if tuple(info.shape) != module.weight_shape:
                raise HtsrError(
                    f"{source}: the adapter's update of {module.name} is {list(module.weight_shape)}, "
                    f"the base's weight is {list(info.shape)}: not this adapter's base"
                )
        for key, info in self._whole.items():
            if key in base_infos and tuple(base_infos[key].shape) != tuple(info.shape):
                raise HtsrError(
                    f"{source}: the adapter saves {key} as {list(info.shape)}, the base has it as "
                    f"{list(base_infos[key].shape)}: not this adapter's base"
                )

    def relist(self, infos: list[TensorInfo]) -> list[TensorInfo]:
        out = []
        for info in infos:
            if info.key in self._modules:
                module = self._modules[info.key]
                label = f"{info.storage_label} + lora r={module.rank}" + (" dora" if module.magnitude_key else "")
                out.append(TensorInfo(info.key, info.shape, torch.float64, label, info.unreadable))
            elif info.key in self._whole:
                out.append(self._whole[info.key])
            else:
                out.append(info)
        return out

    def load_for(self, key: str, move: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if key in self._whole:
            return move(self._adapter.load_whole(key))
        module = self._modules.get(key)
        if module is None:
            return self._inner.load_for(key, move)
        weight = self._inner.load_for(key, move)
        b, a = self._adapter.factors(module)
        fan_in_fan_out = self._adapter.config.fan_in_fan_out
        update = dense_update(module, move(b), move(a), fan_in_fan_out)
        magnitude = move(self._adapter.file.load(module.magnitude_key)) if module.magnitude_key else None
        return merged_weight(weight, update, magnitude, module, fan_in_fan_out)

    def listing_reads(self) -> str:
        return f"{self._inner.listing_reads()}; the adapter: {self._adapter.file.listing_reads()}"

    def close(self) -> None:
        try:
            self._adapter.file.close()
        finally:
            super().close()
