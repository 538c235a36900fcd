"""Module order (algorithms.md section 10): which layer is first and which is last.

A torch state dict is already in module registration order. safetensors
files store their keys sorted, so for a Hugging Face directory the order is
rebuilt from the architecture itself, instantiated on the meta device (no
memory for weights). Without a known architecture, a numeric-aware sort with
embeddings first and heads last is the best guess.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from htsr_cli.errors import HtsrError
from htsr_cli.checkpoints.sources import read_sidecar
from htsr_cli.io import read_document, write_atomic

EMBEDDING_COMPONENTS = frozenset({"wte", "wpe"})
HEAD_COMPONENTS = frozenset({"lm_head", "classifier", "fc", "head", "score"})

_DIGITS = re.compile(r"(\d+)")


def module_order(
    keys: Sequence[str], *, config_dir: Path | None, sorted_storage: bool
) -> list[str]:
    """`keys` (in stored order) in module order.

    `sorted_storage` says the stored order is alphabetical (safetensors) rather
    than the registration order (torch files); `config_dir` is a directory
    that may hold a Hugging Face config.json describing the architecture.
    """
    fallback = natural_order(keys) if sorted_storage else list(keys)
    if config_dir is not None and (config_dir / "config.json").is_file():
        return architecture_order(config_dir, fallback) or fallback
    return fallback


def config_model_type(config_dir: Path) -> str | None:
    """`model_type` from the config.json in `config_dir`, if there is a readable one."""
    config = read_sidecar(config_dir, "config.json")
    model_type = config.get("model_type") if config is not None else None
    return model_type if isinstance(model_type, str) else None


def natural_order(keys: Sequence[str]) -> list[str]:
    """Numeric-aware sort (`layers.9` before `layers.10`), embeddings first, heads last."""
    return sorted(keys, key=_natural_sort_key)


def _natural_sort_key(key: str) -> tuple[int, list[str | int], str]:
    parts = key.split(".")
    if "embed" in key.lower() or EMBEDDING_COMPONENTS.intersection(parts):
        group = 0
    elif _is_head(parts[:-1]):
        group = 2
    else:
        group = 1
    # re.split with a group alternates text and digit runs, so positions compare like with like.
    pieces = [int(piece) if index % 2 else piece for index, piece in enumerate(_DIGITS.split(key))]
    return group, pieces, key


def _is_head(modules: list[str]) -> bool:
    # A head sits at the top level, or ends a path outside the numbered blocks
    # (`model.lm_head`); an `fc` inside `layers.3` is part of a block.
    if not modules:
        return False
    if modules[0] in HEAD_COMPONENTS:
        return True
    return modules[-1] in HEAD_COMPONENTS and not any(part.isdigit() for part in modules)


def architecture_order(config_dir: Path, keys: Sequence[str]) -> list[str] | None:
    """`keys` in the order of the architecture's own state dict, or None when
    the architecture cannot be built or shares no key with the checkpoint."""
    config = read_sidecar(config_dir, "config.json")
    if config is None:
        return None
    check_config_counts(config, len(keys), config_dir / "config.json")
    architecture = cached_architecture_keys(config_dir)
    if architecture is None:
        return None
    return order_by_reference(keys, *architecture)


# Config fields that say how many modules to build: each layer and each expert is
# at least one tensor of the checkpoint, so a count above the tensors it holds
# describes weights that are not there (and building it would exhaust memory).
# (num_hidden_layers, n_layer, num_decoder_layers, num_local_experts, n_routed_experts, ...)
_MODULE_COUNTS = re.compile(r"^(num_|n_)?(hidden_|encoder_|decoder_|local_|routed_)?(layers?|experts)$")


def check_config_counts(config: dict, tensors: int, where: Path | str) -> None:
    """Refuse a config whose layer or expert counts exceed the `tensors` the checkpoint holds,
    before anything is built from it. Nested configs (text_config, vision_config) are checked too."""
    stack = [config]
    while stack:
        table = stack.pop()
        for key, value in table.items():
            if isinstance(value, dict):
                stack.append(value)
            elif isinstance(value, int) and not isinstance(value, bool) and _MODULE_COUNTS.match(key):
                if value > tensors:
                    raise HtsrError(
                        f"{where}: {key} = {value:,}, but the checkpoint holds only {tensors:,} tensors; "
                        "the config does not describe these weights"
                    )


def order_by_reference(
    keys: Sequence[str], reference: Sequence[str], base_model_prefix: str = ""
) -> list[str] | None:
    """`keys` ordered like `reference` (a model's state-dict keys), or None if none match.

    A key the reference lacks (a name this transformers version changed, such
    as Mixtral's `block_sparse_moe.experts.0.w1`) goes right after the last
    reference key of its closest module (`model.layers.0`), keeping its given
    order among such keys; one with no module in common goes last.
    """
    position = {name: index for index, name in enumerate(reference)}
    module_end: dict[str, int] = {}
    for index, name in enumerate(reference):
        parts = name.split(".")
        for depth in range(1, len(parts)):
            module_end[".".join(parts[:depth])] = index
    # The base model wraps nearly everything; sharing only it says nothing about place.
    module_end.pop(base_model_prefix, None)
    prefix = f"{base_model_prefix}." if base_model_prefix else ""

    def spellings(key: str) -> list[str]:
        # Checkpoints of a base model lack the task model's prefix (`bert.`), and vice versa.
        return [key, prefix + key, key.removeprefix(prefix)] if prefix else [key]

    def closest_module_end(name: str) -> tuple[int, int]:
        parts = name.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:depth])
            if module in module_end:
                return depth, module_end[module]
        return 0, len(reference)

    def sort_key(item: tuple[int, str]) -> tuple[int, int, int]:
        given, key = item
        exact = next((position[name] for name in spellings(key) if name in position), None)
        if exact is not None:
            return exact, 0, given
        _, end = max(closest_module_end(name) for name in spellings(key))
        return end, 1, given

    if not any(name in position for key in keys for name in spellings(key)):
        return None
    return [key for _, key in sorted(enumerate(keys), key=sort_key)]


def cache_directory() -> Path:
    """$HTSR_CACHE_DIR, else $XDG_CACHE_HOME/htsr, else ~/.cache/htsr."""
    if os.environ.get("HTSR_CACHE_DIR"):
        return Path(os.environ["HTSR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "htsr"


def cached_architecture_keys(config_dir: Path) -> tuple[list[str], str] | None:
    """`_architecture_keys`, remembered per config.json content and transformers version.

    Building the order imports transformers (seconds of CPU on a small machine)
    for what is a pure function of the config; a CI gate that analyses the same
    architecture on every run pays it once. A cache that cannot be read or
    written is ignored.
    """
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None
    digest = hashlib.sha256(read_document(config_dir / "config.json") + version.encode()).hexdigest()
    entry = cache_directory() / "module-order" / f"{digest}.json"
    try:
        cached = json.loads(entry.read_text(encoding="utf-8"))
        keys, prefix = cached["keys"], cached["base_model_prefix"]
        # A damaged or foreign cache entry is recomputed, never trusted.
        if isinstance(keys, list) and all(isinstance(key, str) for key in keys) and isinstance(prefix, str):
            return keys, prefix
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        pass
    architecture = _architecture_keys(config_dir)
    if architecture is not None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(entry, json.dumps({"keys": architecture[0], "base_model_prefix": architecture[1]}))
        except (OSError, HtsrError):
            pass
    return architecture


def _architecture_keys(config_dir: Path) -> tuple[list[str], str] | None:
    """State-dict keys and `base_model_prefix` of the model that config.json describes."""
    # Imported here: transformers takes seconds to import, and only Hugging
    # Face directories need it.
    try:
        import transformers
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return None
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = transformers.AutoConfig.from_pretrained(
                config_dir, local_files_only=True, trust_remote_code=False
            )
            architectures = getattr(config, "architectures", None) or []
            model_class = getattr(transformers, architectures[0], None) if architectures else None
            with torch.device("meta"):
                if model_class is not None:
                    model = model_class._from_config(config)
                else:
                    model = transformers.AutoModel.from_config(config)
        return list(model.state_dict()), model.base_model_prefix or ""
    except Exception:  # unknown model type, remote code, a config transformers rejects: fall back
        return None
    finally:
        transformers_logging.set_verbosity(verbosity)
