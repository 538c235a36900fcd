"""A directory of weights: a Hugging Face save, or any folder of weight files.

Layouts are tried in the order transformers itself loads them (safetensors
before pickles): `model.safetensors`, safetensors shards with
`model.safetensors.index.json`, `pytorch_model.bin`, `.bin` shards with
`pytorch_model.bin.index.json`; then any `*.safetensors`, then any torch
files. With a config.json the module order comes from the architecture.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from htsr_cli.checkpoints.sharded import ShardedCheckpoint
from htsr_cli.checkpoints.torchfile import is_torch_file
from htsr_cli.errors import HtsrError, brief
from htsr_cli.io import check_depth, os_reason, read_document

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
    try:
        return _find_weight_files(directory, source)
    except OSError as error:  # a directory without read or search permission
        raise HtsrError(f"{source}: cannot read the directory ({os_reason(error)})") from None


def _find_weight_files(directory: Path, source: str) -> list[Path]:
    for single, index in (
        ("model.safetensors", SAFETENSORS_INDEX),
        ("pytorch_model.bin", TORCH_INDEX),
    ):
        if _is_file(directory / single):
            return [directory / single]
        if _is_file(directory / index):
            return _shards_from_index(directory, index, source)
    files = [path for path in directory.iterdir() if _is_file(path)]
    safetensors = [path for path in files if path.suffix.lower() == ".safetensors"]
    if safetensors:
        return sorted(safetensors)
    return sorted(
        path for path in files if is_torch_file(path) and not is_trainer_state(path.name)
    )


def _is_file(path: Path) -> bool:
    """Like Path.is_file, but a permission error or a symlink loop is an error rather than 'no file'."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
    except OSError as error:  # ELOOP, EACCES, ENAMETOOLONG: name the entry, not the directory
        raise HtsrError(f"{path}: {os_reason(error)}") from None


def _shards_from_index(directory: Path, index: str, source: str) -> list[Path]:
    data = read_document(directory / index)  # regular files of bounded size only
    try:
        document = json.loads(data)
        check_depth(document, f"{source}: {index}")
        weight_map = document["weight_map"]
        names = set(weight_map.values())
        if not all(isinstance(name, str) and name for name in names):
            raise TypeError("shard names must be non-empty strings")
        if any("\0" in name for name in names):
            raise ValueError("a shard name contains a NUL character")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise HtsrError(f"{source}: {index} is not a valid shard index ({brief(error)})") from None
    # Shard names are zero-padded (model-00002-of-00011), so a plain sort is file order.
    shards = sorted(_inside(directory, name, index, source) for name in names)
    missing = [path.name for path in shards if not _is_file(path)]
    if missing:
        raise HtsrError(
            f"{source}: shards listed in {index} are missing ({', '.join(missing)}); "
            "download the model again"
        )
    return shards


def allowed_roots(directory: Path) -> list[Path]:
    """Where the files of a model directory may really lie: in it, or for a hub cache
    snapshot (whose files are links) in its repository's blobs/."""
    root = Path(os.path.realpath(directory))
    return [root, root.parent.parent / "blobs"] if root.parent.name == "snapshots" else [root]


def _inside(directory: Path, name: str, index: str, source: str) -> Path:
    """The shard `name` of an index, which must stay inside the model directory.

    The name may not be absolute or climb out with `..`, and once symlinks are
    resolved the file must still lie in the directory; in a Hugging Face cache
    snapshot, files are links into the repository's own `blobs/`, which counts
    as inside.
    """
    path = directory / name
    allowed = allowed_roots(directory)
    resolved = Path(os.path.realpath(path))
    if os.path.isabs(name) or ".." in Path(name).parts or not any(resolved.is_relative_to(a) for a in allowed):
        raise HtsrError(
            f"{source}: {index} lists a shard outside the model directory ({name!r}); refusing to read it"
        )
    return path
