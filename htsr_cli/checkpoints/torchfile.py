"""torch files (`.pt .pth .bin .ckpt`): read with the weights-only unpickler.

`weights_only=True` refuses any pickle that would import or call arbitrary
code, so a hostile checkpoint is rejected before anything runs. Zip-format
files (every `torch.save` since torch 1.6) are memory-mapped: listing the
tensors reads only the pickle, and a tensor's bytes are paged in when it is
used. Legacy (pre-zip) files cannot be mapped and are read whole.

A zip file's records are checked before they are trusted: each tensor's
storage must be exactly the size of the record it points at (a memory-mapped
storage that claims more would silently read the bytes of the next record),
and a record's CRC-32 is verified the first time one of its tensors is
loaded, on the mapped bytes the solver reads next anyway.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from htsr_cli.checkpoints.statedict import StateDictCheckpoint, unwrap_state_dict
from htsr_cli.errors import HtsrError, brief
from htsr_cli.io import PICKLE_BYTES, open_input, os_reason

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Classic ImageNet training scripts save `checkpoint.pth.tar`; the content is a torch file.
TORCH_DOUBLE_SUFFIXES = (".pth.tar", ".pt.tar")

_ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra field length
_CRC_CHUNK = 64 << 20

# How the weights-only unpickler words a refusal to import or call something
# (torch 2.2 .. 2.13): "Unsupported global: GLOBAL builtins.exec", "Trying to
# load unsupported GLOBAL posix.system whose module posix is blocked", a call
# or object construction of something not allow-listed.
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")
_REFUSED_CALLS = (
    "Trying to call reduce for unrecognized function",
    "Can only create new object for",
    "Can only build Tensor, Parameter",
)
_OBJECT_NAME = re.compile(r"<(?:class|function|built-in function|built-in method) '?([\w.]+)")
# Opcodes that import or construct objects; the weights-only unpickler rejects
# them as "Unsupported operand N" (STACK_GLOBAL comes from pickle protocol >= 4).
_CODE_OPCODES = {ord(op): name for op, name in (
    ("c", "GLOBAL"), ("\x93", "STACK_GLOBAL"), ("i", "INST"), ("o", "OBJ"),
    ("\x81", "NEWOBJ"), ("\x92", "NEWOBJ_EX"), ("\x82", "EXT1"), ("\x83", "EXT2"), ("\x84", "EXT4"),
)}
_UNSUPPORTED_OPERAND = re.compile(r"Unsupported operand (\d+)")


def is_torch_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(TORCH_SUFFIXES) or name.endswith(TORCH_DOUBLE_SUFFIXES)


@dataclass(frozen=True)
class _Record:
    """One stored member of a zip-format torch file."""

    name: str
    offset: int  # where its bytes start in the file
    size: int
    crc: int


class TorchFile(StateDictCheckpoint):
    """A torch file's state dict; a zip file's records are CRC-checked as their tensors are first loaded."""

    def __init__(self, path: Path) -> None:
        tensors, self._records = read_torch_file(path)
        super().__init__(tensors, str(path))
        self._verified: set[int] = set()
        self._reads = _listing_reads(path)

    def listing_reads(self) -> str:
        return self._reads

    def load(self, key: str) -> torch.Tensor:
        tensor = super().load(key)
        record = self._records.get(key)
        if record is not None and record.offset not in self._verified:
            _verify_crc(tensor, record, self.source)
            self._verified.add(record.offset)
        return tensor


def _listing_reads(path: Path) -> str:
    """What listing a torch file read: a zip file's pickle (its tensors are mapped, not
    read), or all of a legacy file, which cannot be mapped."""
    size = os.path.getsize(path)
    if not _is_zip(path):
        return f"{path.name}: the whole file ({size:,} bytes; the legacy torch format cannot be memory-mapped)"
    with zipfile.ZipFile(path) as archive:
        pickled = sum(info.file_size for info in archive.infolist() if info.filename.endswith(".pkl"))
    return f"{path.name}: its pickle ({pickled:,} of {size:,} bytes); tensor data is memory-mapped, not read"


def open_torch_file(path: Path) -> TorchFile:
    return TorchFile(path)


def read_torch_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, _Record]]:
    """The unwrapped state dict of a torch file, memory-mapped when the format allows,
    and for a zip file the record holding each tensor's storage (checked for size)."""
    tensors = unwrap_state_dict(load_torch_object(path), str(path))
    with _reading(path):
        records = _storage_records(path, _zip_records(path)) if _is_zip(path) else {}
    return tensors, records


def load_torch_object(path: Path) -> object:
    """Everything a torch file holds (containers and all), memory-mapped when the format allows.

    A mapping is private (copy-on-write): writing to its tensors never touches the file.
    Before anything is unpickled, a zip file's members are checked for what they
    inflate to; after, every tensor must be backed by bytes the file really holds.
    """
    zipped = _is_zip(path)
    with _reading(path):
        if zipped:
            _check_member_sizes(path)
        loaded = _torch_load(path, mmap=zipped)
    _check_storages(path, loaded)
    return loaded


def _is_zip(path: Path) -> bool:
    with os.fdopen(open_input(path), "rb") as handle:  # a regular file, registered as an input
        return handle.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC


def _check_member_sizes(path: Path) -> None:
    """Refuse a zip whose pickle, or any compressed member, inflates beyond `PICKLE_BYTES`.

    torch.save stores tensor records uncompressed (they are memory-mapped); only
    the pickle is ever read whole, and a deflated member of a few MB can claim GBs.
    """
    cap = PICKLE_BYTES.value()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if (info.filename.endswith(".pkl") or info.compress_type != zipfile.ZIP_STORED) and info.file_size > cap:
                raise HtsrError(
                    f"{path}: member {info.filename} inflates to {info.file_size:,} bytes "
                    f"({info.compress_size:,} stored) {PICKLE_BYTES.beyond()}"
                )


def _check_storages(path: Path, loaded: object) -> None:
    """Every tensor's bytes must be in the file: no tensor larger than its storage (an expanded
    view, whose stride-0 4 bytes would become a 12000 x 12000 matrix when read), and no more
    storage in all than the file's size (a tensor the pickle builds, `torch.FloatTensor(12000, 12000)`,
    has no bytes in the file). Checked before any tensor is read."""
    size = os.path.getsize(path)
    storages: dict[int, int] = {}
    for key, tensor in _tensors_in(loaded):
        if tensor.layout != torch.strided or tensor.is_meta:
            continue
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # quantized tensors: torch's own checks
            continue
        needed = tensor.numel() * tensor.element_size()
        if needed > storage.nbytes():
            shape = "x".join(map(str, tensor.shape)) or "scalar"
            raise HtsrError(
                f"{path}: tensor {key!r} claims {shape} ({needed:,} bytes) on {storage.nbytes():,} bytes of "
                "storage (an expanded or overlapping view); save it with .contiguous() to analyze it"
            )
        storages[storage.data_ptr()] = storage.nbytes()
    total = sum(storages.values())
    if total > size:
        raise HtsrError(
            f"{path}: its tensors claim {total:,} bytes of storage but the file holds {size:,}; "
            "tensors must be stored in the file, not built by its pickle"
        )


def _tensors_in(loaded: object) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) for every tensor in a loaded object's dicts, lists and tuples, each container
    visited once (a pickle's memo can make one contain itself)."""
    seen: set[int] = set()
    stack: list[tuple[str, object]] = [("", loaded)]
    while stack:
        prefix, obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            yield prefix, obj
            continue
        if not isinstance(obj, (dict, list, tuple)) or id(obj) in seen:
            continue
        seen.add(id(obj))
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        stack.extend((f"{prefix}.{key}" if prefix else str(key), value) for key, value in items)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """torch's and the OS's errors on reading `path`, as one line each."""
    try:
        yield
    except pickle.UnpicklingError as error:
        raise _refusal(path, error) from error
    except OSError as error:
        raise HtsrError(f"{path}: {os_reason(error)}") from error
    except HtsrError:
        raise
    except Exception as error:  # torch reports damage as RuntimeError, EOFError, KeyError, ...
        raise HtsrError(f"{path}: is truncated or not a valid torch checkpoint ({brief(error)})") from error


def _torch_load(path: Path, **options) -> object:
    with warnings.catch_warnings():
        # Legacy files make the unpickler warn about their pickle protocol.
        warnings.simplefilter("ignore")
        options.setdefault("map_location", "cpu")
        return torch.load(path, weights_only=True, **options)


def _zip_records(path: Path) -> dict[int, _Record]:
    """Every member of the archive by the offset of its bytes; the pickle's CRC is checked here."""
    records: dict[int, _Record] = {}
    with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
        for info in archive.infolist():
            raw.seek(info.header_offset)
            header = raw.read(_LOCAL_HEADER.size)
            if len(header) < _LOCAL_HEADER.size or header[:4] != _ZIP_MAGIC:
                raise HtsrError(f"{path}: record {info.filename} has no valid header; the file is damaged")
            _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
            offset = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
            records[offset] = _Record(info.filename, offset, info.file_size, info.CRC)
            if info.filename.endswith("data.pkl"):
                archive.read(info)  # the pickle is small; zipfile checks its CRC as it reads
    return records


def _storage_records(path: Path, records: dict[int, _Record]) -> dict[str, _Record]:
    """Tensor key -> the record holding its storage, refusing storages whose claimed size differs.

    The pickle is read a second time onto the meta device, where torch notes
    each storage's offset in the file and its size without reading or
    allocating data.
    """
    try:
        on_meta = unwrap_state_dict(_torch_load(path, map_location="meta"), str(path))
    except NotImplementedError:
        # Quantized tensors cannot be built on the meta device; such files keep
        # torch's own checks and every record's CRC is verified on first use.
        return {}
    found: dict[str, _Record] = {}
    for key, tensor in on_meta.items():
        if tensor.layout != torch.strided:
            continue  # sparse tensors are skipped, never read
        storage = tensor.untyped_storage()
        offset = getattr(storage, "_checkpoint_offset", None)
        if offset is None:  # a torch that does not note offsets
            return {}
        record = records.get(offset)
        if record is None:
            raise HtsrError(f"{path}: tensor {key!r} points at no record of the archive; the file is damaged")
        if storage.nbytes() != record.size:
            raise HtsrError(
                f"{path}: tensor {key!r} claims {storage.nbytes():,} bytes of storage but its record "
                f"{record.name} holds {record.size:,}; the file is damaged"
            )
        found[key] = record
    return found


def _verify_crc(tensor: torch.Tensor, record: _Record, source: str) -> None:
    """CRC-32 of the tensor's whole storage (the record's bytes, memory-mapped) against the archive's."""
    storage = tensor.untyped_storage()
    data = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()  # a view, no copy
    crc = 0
    for start in range(0, data.size, _CRC_CHUNK):
        crc = zlib.crc32(data[start : start + _CRC_CHUNK], crc)
    if crc != record.crc:
        raise HtsrError(
            f"{source}: record {record.name} is corrupted (CRC-32 {crc:08x}, expected {record.crc:08x}); "
            "the file is damaged: download or copy it again"
        )


def _refusal(path: Path, error: pickle.UnpicklingError) -> HtsrError:
    what = _refused_code(str(error)) or _foreign_import(path)
    if what is None:
        # Opcodes the safe unpickler rejects come from damaged files or plain
        # (non-torch) pickles, not from a request to run code.
        detail = brief(error.__context__ or error)
        return HtsrError(f"{path}: is truncated or not a valid torch checkpoint ({detail})")
    return HtsrError(
        f"{path}: refused: the pickle would run code ({what}); htsr loads weights only: "
        "re-save the weights with torch.save(model.state_dict(), PATH) or as .safetensors"
    )


def _refused_code(message: str) -> str | None:
    """What the pickle tried to import or call, when the refusal was about running code."""
    if found := _REFUSED_GLOBAL.search(message):
        return found[1]
    for phrase in _REFUSED_CALLS:
        if phrase in message:
            found = _OBJECT_NAME.search(message.split(phrase, 1)[1])
            return found[1] if found else "an object that is not allow-listed"
    if (found := _UNSUPPORTED_OPERAND.search(message)) and int(found[1]) in _CODE_OPCODES:
        return f"pickle opcode {_CODE_OPCODES[int(found[1])]}"
    return None


def _foreign_import(path: Path) -> str | None:
    """The first import in the file's pickle that the weights-only unpickler does not allow, if any.

    The unpickler stops at the first opcode it does not know (a protocol 4
    pickle's FRAME), before reaching a GLOBAL; `pickletools` walks the opcodes
    without executing any, so the import the pickle asks for can still be named.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(name) if name else b""
        else:
            with path.open("rb") as handle:
                data = handle.read(_CRC_CHUNK)
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None
    allowed = torch._weights_only_unpickler._get_allowed_globals()
    for imported in _pickle_imports(data):
        if imported not in allowed:
            return imported
    return None


def _pickle_imports(data: bytes) -> list[str]:
    """`module.name` of every GLOBAL, INST and STACK_GLOBAL in the first pickle of `data`."""
    imports: list[str] = []
    strings: list[str] = []  # string pushes, for STACK_GLOBAL's two operands
    memo: dict[int, str | None] = {}
    pushed: str | None = None  # the string the previous opcode pushed
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                imports.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                imports.append(f"{strings[-2]}.{strings[-1]}")
            elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if arg is None else int(arg)] = pushed
            elif opcode.name in ("GET", "BINGET", "LONG_BINGET") and memo.get(int(arg)) is not None:
                strings.append(memo[int(arg)])
            elif isinstance(arg, str):
                strings.append(arg)
            pushed = strings[-1] if strings and (isinstance(arg, str) or opcode.name.endswith("GET")) else None
    except Exception:  # damaged or not a pickle: what was found so far
        pass
    return imports
