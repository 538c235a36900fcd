"""Hugging Face hub ids (`org/name`): resolved through the local cache, downloaded
only when the network is allowed.

Only the config and the weights are fetched, never tokenizers, ONNX exports
or other variants. huggingface_hub reads its environment when imported, so the
cache location and offline switch are read here, at call time.
"""

from __future__ import annotations

import os
from pathlib import Path

from htsr_cli.checkpoints.hf_directory import SAFETENSORS_INDEX, TORCH_INDEX, has_weights
from htsr_cli.errors import HtsrError
from htsr_cli.io import os_reason
from htsr_cli.checkpoints.sources import HubId, hub_cache_dir

_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})

# Tried in turn until a snapshot holds weights: the standard safetensors
# layout, the standard pickle layout, then any weight file at all. A cached
# snapshot counts as complete when it has every file of one pattern set, so
# the cache is searched with the same sets.
WEIGHT_PATTERNS = (
    ["config.json", "model.safetensors", SAFETENSORS_INDEX, "model-*-of-*.safetensors"],
    ["config.json", "pytorch_model.bin", TORCH_INDEX, "pytorch_model-*-of-*.bin"],
    ["config.json", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt"],
)


def resolve_repo(hub: HubId) -> Path:
    """The local snapshot folder of a hub id (at its revision), downloading it if allowed and needed."""
    # Imported here: only hub ids need huggingface_hub.
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    cache_dir = hub_cache_dir()
    label = _label(hub)
    for patterns in WEIGHT_PATTERNS:
        try:
            snapshot = Path(
                snapshot_download(
                    hub.repo_id,
                    revision=hub.revision,
                    cache_dir=cache_dir,
                    local_files_only=True,
                    allow_patterns=patterns,
                )
            )
        except LocalEntryNotFoundError:  # not cached, or cached without these files
            continue
        if has_weights(snapshot):
            return snapshot
    if hub_offline():
        raise HtsrError(
            f"{label}: not in the local Hugging Face cache and the hub is offline "
            f"(HF_HUB_OFFLINE=1); download it first with `hf download {_download_args(hub)}` "
            "or pass a local path"
        )
    return _download(hub, cache_dir)


def _label(hub: HubId) -> str:
    return f"{hub.repo_id}@{hub.revision}" if hub.revision else hub.repo_id


def _download_args(hub: HubId) -> str:
    return f"{hub.repo_id} --revision {hub.revision}" if hub.revision else hub.repo_id


def _download(hub: HubId, cache_dir: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    label = _label(hub)
    try:
        for patterns in WEIGHT_PATTERNS:
            snapshot = Path(
                snapshot_download(
                    hub.repo_id, revision=hub.revision, cache_dir=cache_dir, allow_patterns=patterns
                )
            )
            if has_weights(snapshot):
                return snapshot
    except GatedRepoError as error:
        raise HtsrError(
            f"{label}: the model is gated on the Hugging Face hub; accept its terms on "
            "huggingface.co and log in with `hf auth login`"
        ) from error
    except RevisionNotFoundError as error:
        raise HtsrError(
            f"{label}: the model has no revision {hub.revision!r} (a branch, tag or commit) on the hub"
        ) from error
    except RepositoryNotFoundError as error:
        raise HtsrError(
            f"{label}: no such model on the Hugging Face hub (or it is private: log in with "
            "`hf auth login`); check the id or pass a local path"
        ) from error
    except (HfHubHTTPError, LocalEntryNotFoundError) as error:  # no connection, timeouts, hub down
        raise HtsrError(
            f"{label}: not in the local Hugging Face cache and the hub could not be reached "
            f"({type(error).__name__}); download it first with `hf download {_download_args(hub)}` "
            "or pass a local path"
        ) from error
    except OSError as error:  # a full disk, an unwritable cache
        raise HtsrError(
            f"{label}: download into {cache_dir} failed ({os_reason(error)})"
        ) from error
    raise HtsrError(
        f"{label}: no weights found on the hub "
        "(expected model.safetensors, shards with an index, or pytorch_model*.bin)"
    )


def hub_offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.upper() in _TRUE_VALUES
    return constants.HF_HUB_OFFLINE
