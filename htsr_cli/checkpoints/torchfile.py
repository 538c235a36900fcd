"""torch files (`.pt .pth .bin .ckpt`): read with the weights-only unpickler.

`weights_only=True` refuses any pickle that would import or call arbitrary
code, so a hostile checkpoint is rejected before anything runs. Zip-format
files (every `torch.save` since torch 1.6) are memory-mapped: listing the
tensors reads only the pickle, and a tensor's bytes are paged in when it is
used. Legacy (pre-zip) files cannot be mapped and are read whole.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch

from htsr_cli.checkpoints.statedict import StateDictCheckpoint, unwrap_state_dict
from htsr_cli.errors import HtsrError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Classic ImageNet training scripts save `checkpoint.pth.tar`; the content is a torch file.
TORCH_DOUBLE_SUFFIXES = (".pth.tar", ".pt.tar")

_ZIP_MAGIC = b"PK\x03\x04"
# The weights-only unpickler names what it refused: "Unsupported global: GLOBAL builtins.exec".
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([A-Za-z_][\w.]*)")


def is_torch_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(TORCH_SUFFIXES) or name.endswith(TORCH_DOUBLE_SUFFIXES)


def open_torch_file(path: Path) -> StateDictCheckpoint:
    return StateDictCheckpoint(read_torch_file(path), str(path))


def read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """The unwrapped state dict of a torch file, memory-mapped when the format allows."""
    return unwrap_state_dict(load_torch_object(path), str(path))


def load_torch_object(path: Path) -> object:
    """Everything a torch file holds (containers and all), memory-mapped when the format allows.

    A mapping is private (copy-on-write): writing to its tensors never touches the file.
    """
    try:
        with path.open("rb") as handle:
            is_zip = handle.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        with warnings.catch_warnings():
            # Legacy files make the unpickler warn about their pickle protocol.
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as error:
        raise _refusal(path, error) from error
    except OSError as error:
        raise HtsrError(f"{path}: cannot read ({error.strerror or error})") from error
    except Exception as error:  # torch reports damage as RuntimeError, EOFError, KeyError, ...
        raise HtsrError(
            f"{path}: is truncated or not a valid torch checkpoint ({_brief(error)})"
        ) from error
    return obj


def _refusal(path: Path, error: pickle.UnpicklingError) -> HtsrError:
    unsafe = _UNSUPPORTED_GLOBAL.search(str(error))
    if unsafe is None:
        # Opcodes the safe unpickler rejects come from damaged files or plain
        # (non-torch) pickles, not from a request to run code.
        detail = _brief(error.__context__ or error)
        return HtsrError(f"{path}: is truncated or not a valid torch checkpoint ({detail})")
    return HtsrError(
        f"{path}: refused: the pickle would run code ({unsafe[1]}); htsr loads weights only: "
        "re-save the weights with torch.save(model.state_dict(), PATH) or as .safetensors"
    )


def _brief(error: BaseException) -> str:
    """The error's type and the first sentence of its message, on one line."""
    text = " ".join(str(error).split()).split(". ")[0][:160]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
