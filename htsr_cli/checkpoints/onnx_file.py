"""ONNX models (`.onnx`): initializers the graph uses as weight matrices become layers.

Which initializers are weights is read from the graph, not guessed from names
or shapes: the B operand of a Gemm (transposed to [out, in] unless transB),
an initializer operand of a MatMul (y = x W stores W as [in, out]: listed
transposed), the kernel of a Conv or a single-group ConvTranspose, and the
table a Gather indexes along axis 0 (an embedding). Other 2-D or larger
initializers are listed as skipped, saying what uses them.

The file is scanned at the protobuf wire level: the graph's nodes and each
initializer's name, type and dims are read, and every data field is skipped
over with its position noted, so listing reads no tensor data and loading reads
one initializer's bytes, in the model file or in an external data file (whose
location must stay beside the model). A tensor's claimed dims must match the
bytes it really has before anything is allocated. The `onnx` package (the
`[onnx]` extra) parses the nodes and each initializer's metadata; it is
imported only when an `.onnx` file is opened.
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from htsr_cli.checkpoints.base import Checkpoint, TensorInfo
from htsr_cli.errors import HtsrError, brief
from htsr_cli.io import TENSORS_PER_FILE, open_input, os_reason, register_input

ONNX_SUFFIX = ".onnx"
WEIGHT_SUFFIX = ".weight"

# Protobuf wire types.
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
# Field numbers: ModelProto.graph, GraphProto.node / .initializer, TensorProto's data fields.
_MODEL_IR_VERSION, _MODEL_PRODUCER, _MODEL_PRODUCER_VERSION, _MODEL_GRAPH = 1, 2, 3, 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_RAW_DATA, _FLOAT_DATA, _DOUBLE_DATA = 9, 4, 10
_TYPED_DATA = {5: "int32_data", 6: "string_data", 7: "int64_data", 11: "uint64_data"}
# Little-endian fixed-width storage htsr reads: raw_data of each type, float_data, double_data.
_TORCH_DTYPES = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
    9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
    **{code: getattr(torch, name) for code, name in ((4, "uint16"), (12, "uint32"), (13, "uint64"),
                                                      (17, "float8_e4m3fn"), (19, "float8_e5m2"))
       if hasattr(torch, name)},
}
_FIELD_DTYPES = {_FLOAT_DATA: torch.float32, _DOUBLE_DATA: torch.float64}
# ONNX's enum names, for messages about types htsr does not read.
_TYPE_NAMES = {8: "STRING", 14: "COMPLEX64", 15: "COMPLEX128", 18: "FLOAT8E4M3FNUZ", 20: "FLOAT8E5M2FNUZ",
               21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1"}
# Ops whose initializer operand is a weight matrix, and which operand.
WEIGHT_OPS = "Gemm, MatMul, Conv, ConvTranspose and Gather"


def is_onnx_file(path: Path) -> bool:
    return path.suffix.lower() == ONNX_SUFFIX


def import_onnx(source: str) -> Any:
    try:
        import onnx
    except ImportError:
        raise HtsrError(f'{source}: reading ONNX models needs the onnx package: pip install onnx (or, in a clone of htsr, pip install ".[onnx]")') from None
    return onnx


@dataclass
class _Initializer:
    """One initializer as the scan found it: its metadata, and where its data is."""

    name: str
    data_type: int
    dims: tuple[int, ...]
    data: tuple[int, int, int] | None = None  # (field number, start, length) of its data in the model file
    external: dict[str, str] = field(default_factory=dict)
    unreadable: str | None = None


@dataclass(frozen=True)
class _Use:
    """How the graph uses an initializer as a weight matrix."""

    key: str  # the layer's key (ends in .weight)
    transpose: bool  # stored [in, out]: listed and loaded as [out, in]
    reason: str | None = None  # set when the initializer is not used as a weight matrix


class _Wire:
    """Protobuf wire-format reading over a byte buffer, one field at a time."""

    def __init__(self, data: memoryview, source: str) -> None:
        self.data, self.source = data, source

    def varint(self, at: int, end: int) -> tuple[int, int]:
        value = shift = 0
        while at < end and shift < 70:
            byte = self.data[at]
            value |= (byte & 0x7F) << shift
            at += 1
            if byte < 0x80:
                return value, at
            shift += 7
        raise self.damaged("a truncated number")

    def fields(self, start: int, end: int):
        """(field number, wire type, payload start, payload end, value) for each field in [start, end)."""
        at = start
        while at < end:
            tag, at = self.varint(at, end)
            number, wire = tag >> 3, tag & 7
            if wire == _VARINT:
                value, after = self.varint(at, end)
                yield number, wire, at, after, value
            elif wire in (_FIXED64, _FIXED32):
                after = at + (8 if wire == _FIXED64 else 4)
                yield number, wire, at, after, None
            elif wire == _LENGTH:
                length, at = self.varint(at, end)
                after = at + length
                yield number, wire, at, after, None
            else:
                raise self.damaged(f"wire type {wire}")
            if after > end:
                raise self.damaged("a field that runs past its message")
            at = after

    def damaged(self, what: str) -> HtsrError:
        return HtsrError(f"{self.source}: is truncated or not a valid ONNX model ({what})")


class OnnxCheckpoint(Checkpoint):
    """An ONNX model's weight initializers, listed from the graph, loaded one at a time."""

    def __init__(self, path: Path, source: str) -> None:
        self.source = source
        self._path = path
        self._onnx = import_onnx(source)
        self._reading = threading.Lock()
        try:
            self._file = os.fdopen(open_input(path), "rb", buffering=0)
        except OSError as error:
            raise HtsrError(f"{source}: {os_reason(error)}") from None
        try:
            self._scan()
        except BaseException:
            self._file.close()
            raise

    # ---- listing -------------------------------------------------------------------------------

    def _scan(self) -> None:
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            raise HtsrError(f"{self.source}: is empty, not an ONNX model")
        with mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as data:
            wire = _Wire(data, self.source)
            nodes, initializers, meta = [], [], {}
            graph = None
            for number, kind, start, end, value in wire.fields(0, size):
                if number == _MODEL_GRAPH and kind == _LENGTH:
                    graph = (start, end)
                elif number == _MODEL_IR_VERSION and kind == _VARINT:
                    meta["ir_version"] = value
                elif number in (_MODEL_PRODUCER, _MODEL_PRODUCER_VERSION) and kind == _LENGTH:
                    meta[number] = bytes(data[start:end]).decode("utf-8", "replace")
            if graph is None:
                raise wire.damaged("no graph")
            sparse = 0
            for number, kind, start, end, _ in wire.fields(*graph):
                if number == _GRAPH_NODE and kind == _LENGTH:
                    nodes.append(self._node(bytes(data[start:end])))
                    self._check_count(len(nodes), "nodes")
                elif number == _GRAPH_INITIALIZER and kind == _LENGTH:
                    initializers.append(self._initializer(wire, start, end))
                    self._check_count(len(initializers), "initializers")
                elif number == _GRAPH_SPARSE_INITIALIZER:
                    sparse += 1  # not read: noted in format_info
        self._meta = {
            "format": "onnx",
            "ir_version": meta.get("ir_version"),
            "producer": " ".join(part for part in (meta.get(_MODEL_PRODUCER), meta.get(_MODEL_PRODUCER_VERSION)) if part) or None,
            "sparse_initializers": sparse,
        }
        if not initializers:
            raise HtsrError(f"{self.source}: no initializers found (an ONNX model without stored weights)")
        self._initializers = {item.name: item for item in initializers}
        self._uses = _weight_uses(nodes, self._initializers)
        self._infos = {}
        for item in initializers:
            use = self._uses.get(item.name)
            key = use.key if use is not None else item.name
            shape = tuple(reversed(item.dims)) if use is not None and use.transpose else item.dims
            dtype = _TORCH_DTYPES.get(item.data_type, torch.uint8)
            unreadable = item.unreadable or (use.reason if use is not None else None)
            if item.data_type not in _TORCH_DTYPES and unreadable is None:
                unreadable = f"ONNX type {_TYPE_NAMES.get(item.data_type, item.data_type)}, not supported"
            self._infos[key] = (item, use, TensorInfo(key, shape, dtype, unreadable=unreadable))
        first_use = {use.key: index for index, use in enumerate(self._uses.values())}
        self._ordered = sorted(self._infos, key=lambda key: first_use.get(key, len(first_use)))

    def _node(self, raw: bytes) -> Any:
        try:
            return self._onnx.NodeProto.FromString(raw)
        except Exception as error:  # protobuf's DecodeError
            raise HtsrError(f"{self.source}: is truncated or not a valid ONNX model (a node: {brief(error)})") from None

    def _initializer(self, wire: _Wire, start: int, end: int) -> _Initializer:
        """An initializer's metadata, parsed by onnx from its fields without the data, and where its data is."""
        metadata = bytearray()
        data: tuple[int, int, int] | None = None
        typed = None
        for number, kind, field_start, field_end, _ in wire.fields(start, end):
            if number in (_RAW_DATA, _FLOAT_DATA, _DOUBLE_DATA) and kind == _LENGTH:
                data = (number, field_start, field_end - field_start)
            elif number in (_RAW_DATA, _FLOAT_DATA, _DOUBLE_DATA) or number in _TYPED_DATA:
                typed = _TYPED_DATA.get(number, "unpacked typed data")
            else:  # the tag and payload as stored: small metadata only
                metadata += _tag_bytes(number, kind) + _payload(wire, kind, field_start, field_end)
        try:
            tensor = self._onnx.TensorProto.FromString(bytes(metadata))
        except Exception as error:
            raise HtsrError(f"{self.source}: is truncated or not a valid ONNX model (an initializer: {brief(error)})") from None
        if any(size < 0 for size in tensor.dims):
            raise HtsrError(f"{self.source}: initializer {tensor.name!r} has negative dims {list(tensor.dims)}")
        item = _Initializer(tensor.name, tensor.data_type, tuple(int(size) for size in tensor.dims), data)
        item.external = {entry.key: entry.value for entry in tensor.external_data}
        if typed is not None:
            item.unreadable = f"data stored as ONNX {typed}, not supported"
        return item

    def _check_count(self, count: int, what: str) -> None:
        if count > TENSORS_PER_FILE.value():
            raise HtsrError(f"{self.source}: has more than {count - 1:,} {what}, more than htsr reads from one file {TENSORS_PER_FILE.beyond()}")

    def tensors(self) -> list[TensorInfo]:
        return [self._infos[key][2] for key in self._ordered]

    def stored(self) -> list[TensorInfo]:
        return [info for _, _, info in self._infos.values()]

    def format_info(self) -> dict[str, object]:
        return dict(self._meta)

    def listing_reads(self) -> str:
        return "the ONNX graph and each initializer's name, type and dims; tensor data is skipped over, not read"

    # ---- loading -------------------------------------------------------------------------------

    def load(self, key: str) -> torch.Tensor:
        entry = self._infos.get(key)
        if entry is None:
            raise self._missing(key)
        item, use, info = entry
        if info.unreadable is not None:
            raise HtsrError(f"{self.source}: {key}: {info.unreadable}")
        dtype = _FIELD_DTYPES.get(item.data[0], info.dtype) if item.data is not None else info.dtype
        values = self._read(item, dtype).reshape(item.dims)
        return values.t().contiguous() if use is not None and use.transpose else values

    def _read(self, item: _Initializer, dtype: torch.dtype) -> torch.Tensor:
        """One initializer's values: its bytes read into a fresh buffer, once their count matches its dims."""
        count = 1
        for size in item.dims:
            count *= size
        expected = count * dtype.itemsize
        if item.external:
            path, offset, length = self._external(item, expected)
            handle = os.fdopen(open_input(path), "rb", buffering=0)
        else:
            if item.data is None:
                length = offset = 0
            else:
                _, offset, length = item.data
            path, handle = self._path, None
        if length != expected:
            dims = "x".join(map(str, item.dims)) or "scalar"
            raise HtsrError(
                f"{self.source}: initializer {item.name!r} claims {dims} {_dtype_name(dtype)} ({expected:,} bytes) "
                f"but its data holds {length:,} bytes"
            )
        buffer = torch.empty(length, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        try:
            with self._reading if handle is None else handle:
                source = handle or self._file
                source.seek(offset)
                filled = 0
                while filled < length:
                    got = source.readinto(view[filled:])
                    if not got:
                        raise HtsrError(f"{path}: ends {length - filled:,} bytes short of {item.name!r} (it changed after it was opened)")
                    filled += got
        except OSError as error:
            raise HtsrError(f"{path}: cannot read {item.name!r} ({os_reason(error)})") from error
        return buffer.view(dtype)

    def _external(self, item: _Initializer, expected: int) -> tuple[Path, int, int]:
        """(file, offset, length) of an initializer stored outside the model, checked to lie beside it."""
        location = item.external.get("location", "")
        where = f"{self.source}: initializer {item.name!r}"
        if not location or os.path.isabs(location) or ".." in Path(location).parts or "\0" in location:
            raise HtsrError(f"{where} points at external data {location!r} outside the model's directory; refusing to read it")
        directory = Path(os.path.realpath(self._path.parent))
        path = self._path.parent / location
        if not Path(os.path.realpath(path)).is_relative_to(directory):
            raise HtsrError(f"{where} points at external data {location!r} outside the model's directory; refusing to read it")
        try:
            offset = int(item.external.get("offset", "0"))
            size = os.stat(path).st_size
            length = int(item.external["length"]) if "length" in item.external else size - offset
        except ValueError:
            raise HtsrError(f"{where} has an external offset or length that is not a number") from None
        except OSError as error:
            raise HtsrError(f"{path}: {os_reason(error)} (external data of {item.name!r})") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise HtsrError(f"{where} claims bytes [{offset:,}, {offset + length:,}) of {location}, which holds {size:,}")
        register_input(path)
        return path, offset, length

    def close(self) -> None:
        self._file.close()


def _weight_uses(nodes: list[Any], initializers: dict[str, _Initializer]) -> dict[str, _Use]:
    """Initializer name -> how the graph uses it, for every initializer of 2 or more dims, in node order.

    Identity nodes pass an initializer on under another name (tied weights), so
    their outputs count as the initializer.
    """
    alias = {name: name for name in initializers}
    uses: dict[str, _Use] = {}
    other: dict[str, str] = {}
    taken: set[str] = set()
    for node in nodes:
        inputs = [alias.get(name) for name in node.input]
        if node.op_type == "Identity" and inputs and inputs[0] is not None:
            alias.update((output, inputs[0]) for output in node.output)
            continue
        attributes = {attribute.name: attribute for attribute in node.attribute}
        for position, name in enumerate(inputs):
            if name is None or name in uses or len(initializers[name].dims) < 2:
                continue
            transpose = _weight_operand(node.op_type, position, attributes, initializers[name].dims)
            if transpose is None:
                other.setdefault(name, node.op_type)
                continue
            key = _layer_key(name, node, taken, initializers)
            taken.add(key)
            uses[name] = _Use(key, transpose)
    for name, op_type in other.items():
        if name not in uses:
            key = _layer_key(name, None, taken, initializers)
            taken.add(key)
            uses[name] = _Use(key, False, f"an input of {op_type}, not a weight matrix (weights: {WEIGHT_OPS})")
    return uses


def _weight_operand(op_type: str, position: int, attributes: dict[str, Any], dims: tuple[int, ...]) -> bool | None:
    """Whether input `position` of this op is a weight matrix: None if not, else whether it is stored [in, out]."""

    def flag(name: str, default: int = 0) -> int:
        attribute = attributes.get(name)
        return int(attribute.i) if attribute is not None else default

    if op_type == "Gemm" and position == 1:
        return not flag("transB")  # y = A B: B is [in, out] unless transB
    if op_type == "Gemm" and position == 0:
        return bool(flag("transA"))  # y = A x: A is [out, in] unless transA
    if op_type == "MatMul" and len(dims) == 2:
        return position == 1  # x W stores W as [in, out]; W x as [out, in]
    if op_type == "Conv" and position == 1:
        return False
    if op_type == "ConvTranspose" and position == 1 and flag("group", 1) == 1:
        return False  # [in, out, *kernel], as torch stores a ConvTranspose weight
    if op_type == "Gather" and position == 0 and flag("axis") == 0 and len(dims) == 2:
        return False  # an embedding table, rows looked up by index
    return None


def _layer_key(name: str, node: Any, taken: set[str], initializers: dict[str, _Initializer]) -> str:
    """The layer's key: the initializer's name when it names a weight; else the module path the
    exporter gave the node (`/encoder/layer.0/query/MatMul` -> `encoder.layer.0.query.weight`),
    never another layer's key or another initializer's name."""
    if name.endswith(WEIGHT_SUFFIX) and name not in taken:
        return name
    module = ""
    if node is not None and node.name.startswith("/") and node.name.count("/") >= 2:
        module = ".".join(part for part in node.name.split("/")[1:-1] if part)
    key = f"{module or name}{WEIGHT_SUFFIX}"
    while key in taken or key in initializers:
        key = f"{key[: -len(WEIGHT_SUFFIX)]}_{WEIGHT_SUFFIX}"
    return key


def _tag_bytes(number: int, kind: int) -> bytes:
    return _varint_bytes(number << 3 | kind)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _payload(wire: _Wire, kind: int, start: int, end: int) -> bytes:
    """A field's payload as stored (a length-delimited one with its length in front)."""
    payload = bytes(wire.data[start:end])
    return _varint_bytes(len(payload)) + payload if kind == _LENGTH else payload


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
