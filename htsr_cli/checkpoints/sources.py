"""What a CHECKPOINT argument names: a local path or a Hugging Face hub id.

`org/name` is a hub id whenever no such path exists. A bare `gpt2` is one only
when the hub cache holds it: a single word is far more often a mistyped local
directory, which should be reported as such rather than looked up online.

Decided from the text and one `stat`, without importing torch, so a mistyped
path is reported at once (`fixtures/tiny-llam: no such file or directory
(did you mean fixtures/tiny-llama?)`) instead of after seconds of start-up or
as a missing hub id.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from htsr_cli.errors import HtsrError
from htsr_cli.io import os_reason, read_json, register_input

# huggingface_hub's rule: word characters, "-" and "." inside, at most 96 per part.
_REPO_ID = re.compile(r"^\w(?:[\w.-]{0,94}\w)?/\w(?:[\w.-]{0,94}\w)?$")
_BARE_REPO_ID = re.compile(r"^\w(?:[\w.-]{0,94}\w)?$")  # `gpt2`, `bert-base-uncased`: the hub's oldest models
# A branch, tag, commit hash or `refs/pr/N`.
_REVISION = re.compile(r"^\w[\w./-]{0,254}$")
# A file extension: `.json`, `.safetensors`, `.pth`; not the `.5` of `phi-1.5`
# or the `.5-7B` of `Qwen2.5-7B`, which hub names are full of.
_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,11}$")
_SIBLINGS_SCANNED = 10_000
# Files beside a weight file that its readers read too: the architecture
# (module order, the quantization_config) and the settings AutoGPTQ and AutoAWQ
# write. A GGUF file carries all of that inside itself.
SIDECAR_FILES = ("config.json", "quantize_config.json", "quant_config.json")


ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class MergedAdapter:
    """A PEFT adapter merged into its base: the fine-tuned model (`--merged BASE`)."""

    adapter: str
    base: str

    def __str__(self) -> str:
        return f"{self.adapter} merged into {self.base}"


def is_adapter_directory(path: str | os.PathLike) -> bool:
    """A PEFT adapter: a directory with adapter_config.json (checked without importing torch)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


@dataclass(frozen=True)
class HubId:
    """`org/name`, optionally pinned to a revision with `org/name@revision`."""

    repo_id: str
    revision: str | None = None


def looks_like_path(text: str) -> bool:
    """A path rather than a hub id: it has a file extension, starts with `.`, `/` or `~`, or its parent exists."""
    if text.startswith((".", "/", "~")) or _EXTENSION.search(text.rsplit("/", 1)[-1]):
        return True
    parent = os.path.dirname(text)
    return bool(parent) and os.path.isdir(parent)


def parse_hub_id(text: str, bare: bool = False) -> HubId | None:
    """The hub id `text` spells (`org/name` or `org/name@revision`; with `bare`, also `gpt2[@revision]`), or None."""
    name, at, revision = text.partition("@")
    if at and (not _REVISION.match(revision) or ".." in revision.split("/")):
        return None  # `..` would climb out of the cache's refs/ folder
    spelled = _REPO_ID.match(name) or (bare and _BARE_REPO_ID.match(name))
    if not spelled or ".." in name or "--" in name or looks_like_path(name):
        return None
    return HubId(name, revision or None)


def hub_cache_dir() -> str:
    """Where the hub cache is, by the same environment variables huggingface_hub reads."""
    from huggingface_hub import constants

    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return os.path.expanduser(os.environ[variable])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def _cached_bare_id(text: str) -> HubId | None:
    """`gpt2` as a hub id when the hub cache has a `models--gpt2` folder, else None."""
    hub = parse_hub_id(text, bare=True)
    if hub is None or "/" in hub.repo_id:
        return None
    return hub if os.path.isdir(os.path.join(hub_cache_dir(), f"models--{hub.repo_id}")) else None


def locate(text: str) -> Path | HubId:
    """The local file or directory `text` names, or the hub id it spells; else one clear error."""
    if not text:
        raise HtsrError("the checkpoint path is empty")
    try:
        info = os.stat(text)
    except FileNotFoundError:
        hub = parse_hub_id(text) or _cached_bare_id(text)
        if hub is not None:
            return hub
        raise HtsrError(f"{text}: no such file or directory{_suggestion(text)}") from None
    except OSError as error:  # a name too long, a directory without search permission, a symlink loop
        raise HtsrError(f"{text}: {os_reason(error)}") from None
    except ValueError:  # an embedded NUL byte
        raise HtsrError(f"{text!r}: not a valid path (it contains a NUL character)") from None
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
        raise HtsrError(f"{text}: not a regular file or directory")
    path = Path(text)
    for read in input_files(path):
        register_input(read)  # known before any output is written
    return path


def input_files(path: Path) -> list[Path]:
    """What reading the checkpoint at `path` opens: a directory (all of it), or a file and the
    sidecars beside it that exist."""
    if path.is_dir() or path.suffix.lower() == ".gguf":
        return [path]
    return [path, *(beside for name in SIDECAR_FILES if os.path.lexists(beside := path.parent / name))]


def check_source(text: str) -> None:
    """Fail fast on a CHECKPOINT argument that names no readable path and no hub id (no torch import)."""
    locate(text)


def _suggestion(text: str) -> str:
    """` (did you mean SIBLING?)` for the closest existing name beside a mistyped path, or ''."""
    parent, name = os.path.split(text.rstrip("/"))
    try:
        with os.scandir(parent or ".") as entries:
            siblings = [entry.name for _, entry in zip(range(_SIBLINGS_SCANNED), entries)]
    except OSError:
        return ""
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    return f" (did you mean {os.path.join(parent, close[0])}?)" if close else ""


def read_sidecar(directory: Path, name: str) -> dict[str, Any] | None:
    """A JSON file beside the weights (config.json, quantize_config.json), or None when there is none.

    Read like every document (a regular file, its size and nesting bounded);
    one that exists but is not a JSON object is refused, not silently ignored:
    how the weights are read depends on it.
    """
    path = directory / name
    if not os.path.lexists(path):
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise HtsrError(f"{path}: not a JSON object")
    return data
