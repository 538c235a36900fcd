"""Running a checkpoint as a transformers model: its directory, config, tokenizer and text to feed it.

Only `htsr prune` with Wanda or OWL and `htsr eval perplexity` run a model;
everything else reads weights alone. transformers is imported inside these
functions: it takes seconds to import.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from htsr_cli.checkpoints.hub import resolve_repo
from htsr_cli.checkpoints.order import check_config_counts
from htsr_cli.errors import HtsrError, brief
from htsr_cli.io import os_reason, read_text as read_text_file
from htsr_cli.checkpoints.sources import HubId, locate


def model_directory(source: str, purpose: str) -> Path:
    """The Hugging Face directory of a local path or a cached hub id."""
    where = locate(source)  # one clear line for a missing or unreadable path
    if isinstance(where, HubId):
        return _only_files(resolve_repo(where), source)
    if where.is_dir():
        return _only_files(where, source)
    raise HtsrError(
        f"{source}: {purpose} runs the model, which needs a Hugging Face directory "
        "(config.json, weights and tokenizer), not a single weight file"
    )


def _only_files(directory: Path, source: str) -> Path:
    """`directory`, once every entry in it is a regular file or a directory (links followed).

    transformers opens the config and tokenizer files by name, blocking on a FIFO
    and reading /dev/zero until memory runs out; such an entry is refused first.
    """
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    info = os.stat(entry.path)
                except OSError as error:
                    raise HtsrError(f"{source}: {entry.name}: {os_reason(error)}") from None
                if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                    raise HtsrError(f"{source}: {entry.name} is not a regular file; transformers would read it")
    except OSError as error:
        raise HtsrError(f"{source}: cannot read the directory ({os_reason(error)})") from None
    return directory


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


# What a model built from a config may hold beyond the weights the checkpoint supplies
# (rotary tables, causal-mask buffers, a randomly initialised head): little for a
# real config. One claiming 4,000,000 positions would allocate gigabytes first.
UNSUPPLIED_BYTES = 256 << 20


def check_config_against_weights(
    build: Callable[[], torch.nn.Module], config: Any, shapes: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Refuse a config that does not describe the checkpoint's weights, before a model is built from it.

    The config's layer and expert counts are checked against the tensors there
    are; then `build()` runs on the meta device (no memory), and every
    parameter and buffer the checkpoint has must have the checkpoint's shape,
    while what it does not supply may not exceed the weights it does (or 256 MiB).
    """
    check_config_counts(config.to_dict(), len(shapes), f"{source}: config.json")
    with torch.device("meta"), quiet_transformers():
        skeleton = build()
    base = skeleton.base_model_prefix or ""
    supplied = unsupplied = 0
    tensors = [*skeleton.named_parameters(), *skeleton.named_buffers()]
    for name, tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        spellings = [name, f"{base}.{name}", name.removeprefix(f"{base}.")] if base else [name]
        key = next((spelling for spelling in spellings if spelling in shapes), None)
        if key is None:
            unsupplied += size
        elif tuple(shapes[key]) != tuple(tensor.shape):
            raise HtsrError(
                f"{source}: {key}: shape {tuple(shapes[key])} in the checkpoint, {tuple(tensor.shape)} "
                "in the architecture config.json describes"
            )
        else:
            supplied += size
    if unsupplied > max(supplied, UNSUPPLIED_BYTES):
        raise HtsrError(
            f"{source}: config.json describes a model that needs {unsupplied:,} bytes beyond the checkpoint's "
            f"{supplied:,} bytes of weights (position tables or buffers far larger than the model); "
            "it does not describe these weights"
        )


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
    """The text of a UTF-8 file (its first `limit` characters when given); refuses missing or empty files.

    A regular file only, at most `HTSR_MAX_TEXT_BYTES` (see `htsr_cli.io.read_text`):
    a FIFO or /dev/zero named by mistake is refused at once.
    """
    text = read_text_file(path, f"{option} {path}", limit)
    if not text.strip():
        raise HtsrError(f"{option} {path}: the file is empty")
    return text


def token_ids(tokenizer: Any, text: str, special_tokens: bool) -> list[int]:
    """The whole text as one token sequence (the tokenizer's own BOS/EOS only with `special_tokens`)."""
    with quiet_transformers():
        return list(tokenizer(text, add_special_tokens=special_tokens)["input_ids"])
