"""A directory of weights: a Hugging Face save, or any folder of weight files.

Layouts are tried in the order transformers itself loads them (safetensors
before pickles): `model.safetensors`, safetensors shards with
`model.safetensors.index.json`, `pytorch_model.bin`, `.bin` shards with
`pytorch_model.bin.index.json`; then any `*.safetensors`, then any torch
files. With a config.json the module order comes from the architecture.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from htsr_cli.checkpoints.sharded import ShardedCheckpoint
from htsr_cli.checkpoints.torchfile import is_torch_file
from htsr_cli.errors import HtsrError

SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_INDEX = "pytorch_model.bin.index.json"
# Files a transformers Trainer writes next to the weights; they are not weights.
_TRAINER_STATE = re.compile(
    r"^(training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth)$"
)


def is_trainer_state(name: str) -> bool:
    """Optimizer, scheduler and argument files a Trainer saves beside the weights."""
    return bool(_TRAINER_STATE.match(name))


def has_weights(directory: Path) -> bool:
    """Whether the directory holds a complete set of weights (a partial download does not)."""
    try:
        return bool(_weight_files(directory, source=str(directory)))
    except HtsrError:
        return False


def open_directory(directory: Path, source: str) -> ShardedCheckpoint:
    files = _weight_files(directory, source)
    if not files:
        raise HtsrError(
            f"{source}: no weights found "
            "(expected model.safetensors, shards with an index, or pytorch_model*.bin)"
        )
    return ShardedCheckpoint(
        source,
        files,
        config_dir=directory,
        sorted_storage=files[0].suffix.lower() == ".safetensors",
    )


def _weight_files(directory: Path, source: str) -> list[Path]:
    for single, index in (
        ("model.safetensors", SAFETENSORS_INDEX),
        ("pytorch_model.bin", TORCH_INDEX),
    ):
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            return _shards_from_index(directory, index, source)
    try:
        files = [path for path in directory.iterdir() if path.is_file()]
    except OSError as error:
        raise HtsrError(
            f"{source}: cannot read the directory ({error.strerror or error})"
        ) from error
    safetensors = [path for path in files if path.suffix.lower() == ".safetensors"]
    if safetensors:
        return sorted(safetensors)
    return sorted(
        path for path in files if is_torch_file(path) and not is_trainer_state(path.name)
    )


def _shards_from_index(directory: Path, index: str, source: str) -> list[Path]:
    try:
        weight_map = json.loads((directory / index).read_text())["weight_map"]
        # Shard names are zero-padded (model-00002-of-00011), so a plain sort is file order.
        shards = sorted({directory / name for name in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise HtsrError(f"{source}: {index} is not a valid shard index ({error!r})") from error
    missing = [path.name for path in shards if not path.is_file()]
    if missing:
        raise HtsrError(
            f"{source}: shards listed in {index} are missing ({', '.join(missing)}); "
            "download the model again"
        )
    return shards
