"""Running a checkpoint as a transformers model: its directory, config, tokenizer and text to feed it.

Only `htsr prune` with Wanda or OWL and `htsr eval perplexity` run a model;
everything else reads weights alone. transformers is imported inside these
functions: it takes seconds to import.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from htsr_cli.checkpoints.hub import resolve_repo
from htsr_cli.errors import HtsrError, brief
from htsr_cli.io import os_reason
from htsr_cli.checkpoints.sources import HubId, locate


def model_directory(source: str, purpose: str) -> Path:
    """The Hugging Face directory of a local path or a cached hub id."""
    where = locate(source)  # one clear line for a missing or unreadable path
    if isinstance(where, HubId):
        return resolve_repo(where)
    if where.is_dir():
        return where
    raise HtsrError(
        f"{source}: {purpose} runs the model, which needs a Hugging Face directory "
        "(config.json, weights and tokenizer), not a single weight file"
    )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own warnings (long-sequence notices, deprecations) would bury htsr's output."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # htsr draws its own, and only on a terminal
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def load_config(directory: Path, source: str, purpose: str) -> Any:
    import transformers

    try:
        with quiet_transformers():
            return transformers.AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except Exception as error:  # no config.json, an unknown model_type, remote code: one line for each
        raise HtsrError(
            f"{source}: {purpose} needs a config.json that transformers can instantiate ({brief(error)})"
        ) from error


def load_tokenizer(directory: Path, source: str, purpose: str) -> Any:
    import transformers

    try:
        with quiet_transformers():
            return transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except Exception as error:
        raise HtsrError(f"{source}: {purpose} needs the model's tokenizer files beside it ({brief(error)})") from error


def run_dtype(device: torch.device, stored: torch.dtype | str | None) -> torch.dtype:
    """float32 on the CPU; a stored half precision on a GPU (as the pruning papers run LLMs)."""
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    if device.type == "cuda" and stored in (torch.float16, torch.bfloat16):
        return stored
    return torch.float32


def max_positions(config: Any) -> int | None:
    """The longest sequence the model's position embeddings cover, when the config says."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_seq_len(config: Any, seq_len: int, source: str) -> None:
    limit = max_positions(config)
    if limit is not None and seq_len > limit:
        raise HtsrError(f"--seq-len {seq_len} is longer than {source} can take ({limit} positions)")


def read_text(path: Path, option: str, limit: int | None = None) -> str:
    """The text of a UTF-8 file (its first `limit` characters when given); refuses missing or empty files."""
    try:
        with path.open(encoding="utf-8") as handle:
            text = handle.read(-1 if limit is None else limit)
    except FileNotFoundError:
        raise HtsrError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise HtsrError(f"{option} {path}: is a directory, expected a text file") from None
    except UnicodeDecodeError as error:
        raise HtsrError(f"{option} {path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise HtsrError(f"{option} {path}: cannot read ({os_reason(error)})") from None
    if not text.strip():
        raise HtsrError(f"{option} {path}: the file is empty")
    return text


def token_ids(tokenizer: Any, text: str, special_tokens: bool) -> list[int]:
    """The whole text as one token sequence (the tokenizer's own BOS/EOS only with `special_tokens`)."""
    with quiet_transformers():
        return list(tokenizer(text, add_special_tokens=special_tokens)["input_ids"])
