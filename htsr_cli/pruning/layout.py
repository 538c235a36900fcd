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
import math
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from htsr_cli.checkpoints.hf_directory import allowed_roots, is_trainer_state
from htsr_cli.checkpoints.opening import open_checkpoint
from htsr_cli.checkpoints.safetensors_file import SafetensorsFile, check_safetensors_header
from htsr_cli.checkpoints.sharded import ShardedCheckpoint
from htsr_cli.checkpoints.statedict import unwrap_state_dict
from htsr_cli.checkpoints.torchfile import is_torch_file, load_torch_object
from htsr_cli.errors import HtsrError
from htsr_cli.io import check_output_paths, copy_regular_file, current_umask, os_reason, parse_json, read_document

RECORD = "htsr-prune.json"
SCHEMA = "htsr.prune/1"
# Model files of other frameworks and exports: copying them would ship dense weights beside the pruned ones.
OTHER_WEIGHT_SUFFIXES = (".gguf", ".onnx", ".onnx_data", ".h5", ".msgpack", ".tflite", ".ot", ".mlmodel", ".pb", ".npz")
_HEADER_LIMIT = 100_000_000  # safetensors' own cap on the JSON header

# prune(key, load) -> the pruned tensor (same dtype and shape), or None to keep the stored one.
# `load` reads the stored tensor; a pruner calls it only for tensors it prunes.
Pruner = Callable[[str, Callable[[], torch.Tensor]], "torch.Tensor | None"]


def output_checks(
    output: Path, inputs: list[Path | None], overwrite: bool, record: str = RECORD, schema: str = SCHEMA
) -> list[str]:
    """Refuse an output that would overwrite an input, or a directory that is not ours to replace.

    `record` is the file the writing command leaves in its output (htsr-prune.json,
    htsr-quantize.json), an htsr document of `schema` with the manifest of what it
    wrote. Returns the files an earlier output of that command holds (what
    --overwrite replaces), or [] for a new or empty directory.
    """
    check_output_paths({"-o": output}, inputs)
    if not output.parent.is_dir():
        raise HtsrError(f"-o {output}: directory {output.parent} does not exist")
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise HtsrError(f"-o {output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise HtsrError(f"-o {output}: exists and is not empty; pass --overwrite to replace it")
        # --overwrite deletes the old directory: only ever one that this command wrote, file for file.
        return earlier_output(output, record, schema)
    return []


def earlier_output(output: Path, record_name: str = RECORD, schema: str = SCHEMA) -> list[str]:
    """The files of an earlier output in `output` (the record last), checked against the record its command wrote.

    The record (`record_name`, a regular file, not a link) must be a `schema`
    document whose manifest (`files.written`) lists every other file in the
    directory, each a regular file of the recorded size: a directory holding
    anything else, a link, or a record without a manifest is not recognised.
    """
    command = record_name.removesuffix(".json").replace("-", " ")

    def refuse(why: str) -> HtsrError:
        return HtsrError(
            f"-o {output}: --overwrite replaces only an earlier {command} output (one with {record_name} "
            f"listing every file in it); {why}; remove this directory yourself"
        )

    record = output / record_name
    if not stat.S_ISREG(_lstat_mode(record)):
        raise refuse(f"{record_name} is missing or not a regular file")
    try:
        document = parse_json(read_document(record), str(record))
    except HtsrError as error:
        raise refuse(str(error)) from None
    files = document.get("files") if isinstance(document, dict) else None
    manifest = files.get("written") if isinstance(files, dict) else None
    if not isinstance(manifest, list) or document.get("schema") != schema:
        raise refuse(f"{record_name} is not an {schema} record with a manifest")
    sizes: dict[str, int] = {}
    for entry in manifest:
        name, size = (entry.get("path"), entry.get("bytes")) if isinstance(entry, dict) else (None, None)
        if not isinstance(name, str) or not isinstance(size, int) or _outside(name):
            raise refuse(f"{record_name} has a malformed manifest entry")
        sizes[name] = size
    found = []
    for directory, subdirectories, files in os.walk(output):
        for name in subdirectories + files:
            path = Path(directory) / name
            relative = path.relative_to(output).as_posix()
            mode = _lstat_mode(path)
            if stat.S_ISDIR(mode) and any(listed.startswith(relative + "/") for listed in sizes):
                continue
            if relative == record_name:
                continue
            if relative not in sizes:
                raise refuse(f"it holds {relative}, which htsr did not write")
            if not stat.S_ISREG(mode) or path.stat().st_size != sizes[relative]:
                raise refuse(f"{relative} is not the file htsr wrote (changed, or not a regular file)")
            found.append(relative)
    return [*found, record_name]


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

    `earlier` are the files of an earlier output being replaced, its record
    included (`output_checks`): only those are deleted. SIGTERM is turned into an exception
    for the duration, so `kill` cleans up like Ctrl-C does.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".htsr-tmp", dir=output.parent))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private
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
    _remove_written(old / "previous", earlier)
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


def open_rewritable(source: str, command: str, rewritten: str) -> ShardedCheckpoint:
    """The checkpoint `htsr COMMAND` reads and writes back in its own layout (weight files on disk:
    torch, safetensors, a Hugging Face directory or a cached hub id); the caller closes it.

    A GGUF file is refused with the route that works (`htsr convert` first): its weights are
    llama.cpp's quantized blocks, which cannot be rewritten in place.
    """
    if not isinstance(source, str):
        raise HtsrError(f"htsr {command} reads a checkpoint from a path or hub id (it writes the same layout back)")
    if source.lower().endswith(".gguf"):
        raise HtsrError(
            f"{source}: a GGUF file cannot be {rewritten} in place (its weights are llama.cpp's quantized blocks); "
            f"convert it first with `htsr convert {source} -o DIR`, then {command} DIR"
        )
    checkpoint = open_checkpoint(source)
    if not isinstance(checkpoint, ShardedCheckpoint):
        checkpoint.close()
        raise HtsrError(f"{source}: htsr {command} needs a checkpoint on disk")
    return checkpoint


def source_directory(source: str, weight_files: list[Path]) -> Path | None:
    """The directory whose other files an output copies: the source directory, a hub id's cached
    snapshot, or None for a single weight file."""
    path = Path(source)
    if path.is_file():
        return None
    return path if path.is_dir() else weight_files[0].parent


def files_record(copies: Copies, staging: Path, weight_files: list[Path]) -> dict[str, Any]:
    """Copy the planned files into `staging` beside the rewritten weight files, and the record's
    `files` entry: what was rewritten, copied and left out, and the manifest a later
    --overwrite may delete."""
    copied = copy_files(copies, staging)
    weights = [path.name for path in weight_files]
    return {"weights": weights, "copied": copied, "left_out": copies.left_out, "written": manifest(staging, weights + copied)}


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


# What a stored tensor becomes: {new key: (dtype, shape)}, known from the listing alone.
TensorLayout = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]
# replace(key, load) -> the tensors of its TensorLayout; `load` reads the stored tensor.
Replacer = Callable[[str, Callable[[], torch.Tensor]], Mapping[str, torch.Tensor]]
_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
}
_COPY_BYTES = 1 << 26  # unchanged tensors are copied through a buffer of this size


def write_replaced_safetensors(source: Path, target: Path, layouts: Mapping[str, TensorLayout], replace: Replacer) -> None:
    """Write `source` to `target` with each tensor named in `layouts` replaced by the tensors `replace` makes.

    The header is written first from the layouts (so each replaced tensor is read,
    converted and written while it alone is in memory); the other tensors are
    copied byte for byte, in their stored order.
    """
    header, data_bytes = check_safetensors_header(source)
    data_start = source.stat().st_size - data_bytes
    stored = sorted((key for key in header if key != "__metadata__"), key=lambda key: header[key]["data_offsets"])
    out: dict[str, object] = {"__metadata__": header["__metadata__"]} if "__metadata__" in header else {}
    offset = 0
    for key in stored:
        entries = (
            {name: (_SAFETENSORS_DTYPES[dtype], list(shape), math.prod(shape) * dtype.itemsize)
             for name, (dtype, shape) in layouts[key].items()}
            if key in layouts
            else {key: (header[key]["dtype"], header[key]["shape"], _span(header[key]))}
        )
        for name, (dtype_name, shape, size) in entries.items():
            out[name] = {"dtype": dtype_name, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
    raw = json.dumps(out, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with SafetensorsFile(source) as reader, source.open("rb") as copy_from, target.open("wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        for key in stored:
            if key not in layouts:
                copy_from.seek(data_start + header[key]["data_offsets"][0])
                _copy_bytes(copy_from, handle, _span(header[key]))
                continue
            made = replace(key, lambda key=key: reader.load(key))
            for name, (dtype, shape) in layouts[key].items():
                tensor = made[name]
                if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                    raise AssertionError(f"{name}: made {tensor.dtype} {list(tensor.shape)}, laid out {dtype} {list(shape)}")
                handle.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))


def _span(entry: dict) -> int:
    begin, end = entry["data_offsets"]
    return end - begin


def _copy_bytes(source, target, count: int) -> None:
    while count:
        chunk = source.read(min(count, _COPY_BYTES))
        if not chunk:
            raise HtsrError(f"{source.name}: ended early (was it truncated meanwhile?)")
        target.write(chunk)
        count -= len(chunk)
