"""Writing the pruned checkpoint in the layout it came in, all or nothing.

The output is a directory. A Hugging Face directory comes out as the same
tree: config, tokenizer and every other file copied, the weight files (single,
or shards with their index) rewritten under the same names. A single weight
file comes out as OUT/<its name>. Weight files in other formats (ONNX, GGUF,
TF, Flax, ...) would still hold the dense weights, so they are left out and listed.

- safetensors: the file is copied and only the byte ranges of pruned tensors
  are overwritten, one tensor at a time: the header and every other tensor stay
  byte-identical, and memory holds one tensor.
- torch files: loaded memory-mapped (copy-on-write), pruned in place and saved
  again with their containers (`state_dict`, DDP prefixes, extra entries)
  untouched; memory holds the pruned tensors of one file.

Everything is written into a temporary directory beside OUT and renamed into
place at the end; an error, Ctrl-C or SIGTERM removes it, so OUT is never half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from htsr_cli.checkpoints.hf_directory import allowed_roots, is_trainer_state
from htsr_cli.checkpoints.safetensors_file import SafetensorsFile
from htsr_cli.checkpoints.statedict import unwrap_state_dict
from htsr_cli.checkpoints.torchfile import is_torch_file, load_torch_object
from htsr_cli.errors import HtsrError
from htsr_cli.io import check_output_paths, copy_regular_file, os_reason, parse_json, read_document

RECORD = "htsr-prune.json"
SCHEMA = "htsr.prune/1"
# Model files of other frameworks and exports: copying them would ship dense weights beside the pruned ones.
OTHER_WEIGHT_SUFFIXES = (".gguf", ".onnx", ".onnx_data", ".h5", ".msgpack", ".tflite", ".ot", ".mlmodel", ".pb", ".npz")
_HEADER_LIMIT = 100_000_000  # safetensors' own cap on the JSON header

# prune(key, load) -> the pruned tensor (same dtype and shape), or None to keep the stored one.
# `load` reads the stored tensor; a pruner calls it only for tensors it prunes.
Pruner = Callable[[str, Callable[[], torch.Tensor]], "torch.Tensor | None"]


def output_checks(output: Path, inputs: list[Path | None], overwrite: bool) -> list[str]:
    """Refuse an output that would overwrite an input, or a directory that is not ours to replace.

    Returns the files an earlier `htsr prune` wrote into `output` (what --overwrite
    replaces), or [] for a new or empty directory.
    """
    check_output_paths({"-o": output}, inputs)
    if not output.parent.is_dir():
        raise HtsrError(f"-o {output}: directory {output.parent} does not exist")
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise HtsrError(f"-o {output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise HtsrError(f"-o {output}: exists and is not empty; pass --overwrite to replace it")
        # --overwrite deletes the old directory: only ever one that htsr prune wrote, file for file.
        return earlier_output(output)
    return []


def earlier_output(output: Path) -> list[str]:
    """The files of an earlier `htsr prune` output in `output`, checked against the record it wrote.

    The record (htsr-prune.json, a regular file, not a link) must be an
    htsr.prune/1 document whose manifest lists every other file in the
    directory, each a regular file of the recorded size: a directory holding
    anything else, a link, or a record without a manifest is not recognised.
    """
    def refuse(why: str) -> HtsrError:
        return HtsrError(
            f"-o {output}: --overwrite replaces only an earlier htsr prune output (one with {RECORD} "
            f"listing every file in it); {why}; remove this directory yourself"
        )

    record = output / RECORD
    if not stat.S_ISREG(_lstat_mode(record)):
        raise refuse(f"{RECORD} is missing or not a regular file")
    try:
        document = parse_json(read_document(record), str(record))
    except HtsrError as error:
        raise refuse(str(error)) from None
    manifest = document.get("files", {}).get("written") if isinstance(document, dict) else None
    if document.get("schema") != SCHEMA or not isinstance(manifest, list):
        raise refuse(f"{RECORD} is not an {SCHEMA} record with a manifest")
    sizes: dict[str, int] = {}
    for entry in manifest:
        name, size = (entry.get("path"), entry.get("bytes")) if isinstance(entry, dict) else (None, None)
        if not isinstance(name, str) or not isinstance(size, int) or _outside(name):
            raise refuse(f"{RECORD} has a malformed manifest entry")
        sizes[name] = size
    found = []
    for directory, subdirectories, files in os.walk(output):
        for name in subdirectories + files:
            path = Path(directory) / name
            relative = path.relative_to(output).as_posix()
            mode = _lstat_mode(path)
            if stat.S_ISDIR(mode) and any(listed.startswith(relative + "/") for listed in sizes):
                continue
            if relative == RECORD:
                continue
            if relative not in sizes:
                raise refuse(f"it holds {relative}, which htsr did not write")
            if not stat.S_ISREG(mode) or path.stat().st_size != sizes[relative]:
                raise refuse(f"{relative} is not the file htsr wrote (changed, or not a regular file)")
            found.append(relative)
    return found


def _lstat_mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def _outside(name: str) -> bool:
    return os.path.isabs(name) or ".." in Path(name).parts or "\0" in name


def manifest(staging: Path, written: list[str]) -> list[dict[str, object]]:
    """Every file written into the output (path relative to it, size): what a later --overwrite may delete."""
    return [{"path": name, "bytes": (staging / name).stat().st_size} for name in written]


@contextmanager
def staged_output(output: Path, earlier: list[str] = ()) -> Iterator[Path]:
    """A fresh directory beside `output`; renamed to `output` when the block ends without error.

    `earlier` are the files of an earlier output being replaced (`output_checks`):
    only those are deleted, with the record. SIGTERM is turned into an exception
    for the duration, so `kill` cleans up like Ctrl-C does.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".htsr-tmp", dir=output.parent))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private
        _replace_directory(staging, output, earlier)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _replace_directory(staging: Path, output: Path, earlier: list[str]) -> None:
    if not output.exists():
        os.rename(staging, output)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".htsr-old", dir=output.parent))
    os.rename(output, old / "previous")
    try:
        os.rename(staging, output)
    except BaseException:
        os.rename(old / "previous", output)
        raise
    _remove_written(old / "previous", [*earlier, RECORD])
    try:
        os.rmdir(old)
    except OSError:
        pass  # something htsr did not write appeared meanwhile: kept there, never deleted


def _remove_written(directory: Path, files: list[str]) -> None:
    """Delete `files` (relative paths) and the directories they leave empty; nothing else."""
    folders = {directory}
    for name in files:
        path = directory / name
        folders.update(parent for parent in path.parents if parent.is_relative_to(directory))
        try:
            path.unlink()
        except OSError:
            pass
    for folder in sorted(folders, key=lambda folder: len(folder.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass(frozen=True)
class Copies:
    """The files of a model directory the output gets as they are, planned before anything is written."""

    files: list[tuple[Path, str]]  # (the regular file to read, its path relative to the directory)
    left_out: list[dict[str, str]]  # {"path", "reason"}


def plan_copies(root: Path, weight_files: list[Path], source: str) -> Copies:
    """Every file under `root` but the weights being rewritten, without following a link out of it.

    Regular files are copied. A link is followed only to a regular file inside
    the directory (or, in a hub cache snapshot, its repository's blobs); a link
    leaving it is refused, so a link to a secret (or /dev/zero) never reaches
    OUT. FIFOs, devices, sockets and links to directories are left out and listed.
    """
    rewritten = {path.resolve() for path in weight_files}
    allowed = allowed_roots(root)
    files: list[tuple[Path, str]] = []
    left_out: list[dict[str, str]] = []
    for directory, subdirectories, names in os.walk(root):
        relative_dir = Path(directory).relative_to(root)
        if ".git" in subdirectories:
            subdirectories.remove(".git")
            left_out.append({"path": str(relative_dir / ".git"), "reason": "version control data"})
        subdirectories.sort()
        for name in list(subdirectories):
            if (Path(directory) / name).is_symlink():  # os.walk does not descend into it
                left_out.append({"path": str(relative_dir / name), "reason": "a link to a directory, not followed"})
        for name in sorted(names):
            path = Path(directory) / name
            relative = str(relative_dir / name)
            try:
                info = os.lstat(path)
                target = Path(os.path.realpath(path))
                if stat.S_ISLNK(info.st_mode):
                    if not any(target.is_relative_to(inside) for inside in allowed):
                        raise HtsrError(
                            f"{source}: {relative} is a link to {target}, outside the model directory; "
                            "htsr prune does not follow it (replace the link with the file, or remove it)"
                        )
                    info = os.stat(path)
            except OSError as error:
                raise HtsrError(f"{source}: {relative}: {os_reason(error)}") from None
            if not stat.S_ISREG(info.st_mode):
                left_out.append({"path": relative, "reason": "not a regular file, not copied"})
                continue
            if target in rewritten:
                continue
            reason = _weights_elsewhere(path)
            if reason is not None:
                left_out.append({"path": relative, "reason": reason})
                continue
            files.append((target, relative))
    return Copies(files, left_out)


def copy_files(copies: Copies, staging: Path) -> list[str]:
    """Copy the planned files into `staging`; returns their relative paths."""
    for target, relative in copies.files:
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        copy_regular_file(target, staging / relative)
    return [relative for _, relative in copies.files]


def _weights_elsewhere(path: Path) -> str | None:
    """Why a file that is not being rewritten must not be copied (it holds dense weights), or None."""
    name = path.name.lower()
    if name.endswith(".safetensors") or (is_torch_file(path) and not is_trainer_state(path.name)):
        return "weights not read (another variant of the model), not pruned"
    if name.endswith(OTHER_WEIGHT_SUFFIXES):
        return "weights in another format, not pruned"
    return None


def rewrite_weights(source: Path, target: Path, prune: Pruner) -> dict[str, int]:
    """Write `source` to `target` with the tensors `prune` changes; returns {key: zeros} of those tensors."""
    if source.suffix.lower() == ".safetensors":
        return _rewrite_safetensors(source, target, prune)
    return _rewrite_torch_file(source, target, prune)


def _rewrite_safetensors(source: Path, target: Path, prune: Pruner) -> dict[str, int]:
    data_start, ranges = _safetensors_ranges(source)
    shutil.copyfile(source, target)
    zeros: dict[str, int] = {}
    # Tensors are read into their own buffers, not through a mapping: a source truncated
    # meanwhile is one error line (and the staged output is removed), never a SIGBUS.
    with SafetensorsFile(source) as reader, open(target, "r+b") as handle:
        for key, (begin, end) in sorted(ranges.items(), key=lambda item: item[1][0]):
            pruned = prune(key, lambda key=key: reader.load(key))
            if pruned is None:
                continue
            data = pruned.contiguous().view(torch.uint8).numpy()
            if data.nbytes != end - begin:
                raise AssertionError(f"{key}: pruned tensor has {data.nbytes} bytes, the file holds {end - begin}")
            handle.seek(data_start + begin)
            handle.write(memoryview(data))
            zeros[key] = int((pruned == 0).sum())
    return zeros


def _safetensors_ranges(path: Path) -> tuple[int, dict[str, tuple[int, int]]]:
    """Where each tensor's bytes are: (start of the data section, {key: (begin, end)} within it)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 0 < length <= min(_HEADER_LIMIT, size - 8):
            raise HtsrError(f"{path}: safetensors header claims {length} bytes, the file has {size}")
        try:
            header = json.loads(handle.read(length))
        except ValueError as error:
            raise HtsrError(f"{path}: not a valid safetensors header ({error})") from None
    data_size = size - 8 - length
    ranges = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= data_size:
            raise HtsrError(f"{path}: tensor {key!r} claims bytes {begin}..{end} beyond the file")
        ranges[key] = (begin, end)
    return 8 + length, ranges


def _rewrite_torch_file(source: Path, target: Path, prune: Pruner) -> dict[str, int]:
    saved = load_torch_object(source)
    zeros: dict[str, int] = {}
    # The same tensor objects as inside `saved`: pruning them in place prunes what is saved.
    for key, tensor in unwrap_state_dict(saved, str(source)).items():
        pruned = prune(key, lambda tensor=tensor: tensor)
        if pruned is None:
            continue
        tensor.copy_(pruned)
        zeros[key] = int((tensor == 0).sum())
    torch.save(saved, target)
    return zeros
