"""Files in and out: inputs read as regular files with clear errors, outputs written atomically.

Every OS error becomes one `HtsrError` naming the path and the reason
(`out.json: permission denied`), so nothing reaches the user as a traceback.
A write goes to a temp file beside the target and is renamed over it at the
end: a failed or interrupted run keeps the old file and leaves no temp file.

While a command runs (`command_files()`), every file it opens for reading is
registered (`register_input`; the readers here do it themselves), and no
output may land on one of them: `check_output_paths` refuses such an output
before any work, and `write_atomic` refuses it again at the moment of writing,
when inputs found only on the way (a config.json beside the weights) are known.

Everything an input file may claim is bounded (`LIMITS`): a document's size
and nesting, a text's size, a checkpoint's tensor count. Each limit names the
environment variable that raises it.
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from htsr_cli.errors import HtsrError

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Limit:
    """A bound on what an input may claim, raised by setting an environment variable.

    `DOCUMENT_BYTES.value()` is the default unless `HTSR_MAX_DOCUMENT_BYTES` says
    otherwise; `DOCUMENT_BYTES.beyond(size)` is the end of a refusal message.
    """

    variable: str  # the environment variable that raises it
    default: int
    what: str  # what it bounds, for docs/input-safety.md and messages
    unit: str = ""  # "bytes" is shown in KiB/MiB/GiB

    def value(self) -> int:
        text = os.environ.get(self.variable, "").strip()
        if not text:
            return self.default
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            value = 0
        if value < 1:
            raise HtsrError(f"{self.variable}={text!r}: must be a whole number >= 1")
        return value

    def shown(self, amount: int | None = None) -> str:
        amount = self.value() if amount is None else amount
        if self.unit != "bytes":
            return f"{amount:,}{f' {self.unit}' if self.unit else ''}"
        for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
            if amount >= 1 << shift and amount % (1 << shift) == 0:
                return f"{amount >> shift} {unit}"
        return f"{amount:,} bytes"

    def beyond(self) -> str:
        """`(at most 64 MiB; set HTSR_MAX_DOCUMENT_BYTES to raise it)`."""
        return f"(at most {self.shown()}; set {self.variable} to raise it)"


# Saved reports, schedules, plans, configs and shard indexes are small JSON/TOML/YAML
# documents (a 70B model's report is a few MB, a 671B model's shard index about 10 MB).
DOCUMENT_BYTES = Limit("HTSR_MAX_DOCUMENT_BYTES", 64 << 20, "size of a JSON/TOML/YAML document", "bytes")
# Real documents nest a handful of levels (a report: 4); deeper is built to exhaust a parser.
DOCUMENT_DEPTH = Limit("HTSR_MAX_DOCUMENT_DEPTH", 100, "nesting depth of a JSON/TOML/YAML document", "levels")
# Calibration and evaluation text (--calibration, --text): a large corpus is read up to this.
TEXT_BYTES = Limit("HTSR_MAX_TEXT_BYTES", 1 << 30, "size of a text file (--text, --calibration)", "bytes")
# Tensors in one checkpoint file (DeepSeek-V3, 671B parameters, stores about 91,000 in all its shards).
TENSORS_PER_FILE = Limit("HTSR_MAX_TENSORS", 200_000, "tensors in one checkpoint file", "tensors")
# The pickle inside a torch zip file (its tensor list; the tensors' bytes are separate records).
PICKLE_BYTES = Limit("HTSR_MAX_PICKLE_BYTES", 256 << 20, "uncompressed pickle of a torch file", "bytes")
LIMITS = (DOCUMENT_BYTES, DOCUMENT_DEPTH, TEXT_BYTES, TENSORS_PER_FILE, PICKLE_BYTES)

# Temp files (and staged directories) this process has created and not yet
# renamed or removed: a signal handler removes them when the process is stopped.
_live_temp_files: set[str] = set()
_live_temp_directories: set[str] = set()


@dataclass
class _CommandInputs:
    """What one command has opened for reading: no output of it may replace any of these."""

    paths: set[Path] = field(default_factory=set)  # resolved files and directories
    identities: dict[tuple[int, int], Path] = field(default_factory=dict)  # (device, inode): hard links too


# None outside a command: a library caller may read a report and save it back over itself.
_inputs: _CommandInputs | None = None


@contextmanager
def command_files() -> Iterator[None]:
    """The scope of one command: inputs registered inside it are protected from its outputs."""
    global _inputs
    previous, _inputs = _inputs, _CommandInputs()
    try:
        yield
    finally:
        _inputs = previous


def register_input(path: PathLike) -> None:
    """Note that the running command reads `path` (a file, or a directory of files)."""
    if _inputs is None:
        return
    try:
        resolved = _resolved(path)
    except (OSError, ValueError):
        return
    _inputs.paths.add(resolved)
    identity = _identity(resolved)
    if identity is not None:
        _inputs.identities.setdefault(identity, resolved)


def registered_inputs() -> list[Path]:
    """The inputs registered so far in this command (empty outside a command)."""
    return sorted(_inputs.paths) if _inputs is not None else []


def os_reason(error: OSError) -> str:
    """The OS's words for an error, lower-case: 'permission denied', 'no space left on device'."""
    if error.errno is not None:
        text = os.strerror(error.errno)
    else:
        text = str(error.strerror or error)
    return text[:1].lower() + text[1:]


def input_error(path: PathLike, error: OSError) -> HtsrError:
    """`PATH: <reason>` for an input that could not be opened or read."""
    return HtsrError(f"{os.fsdecode(path)}: {os_reason(error)}")


def open_input(path: PathLike, name: str | None = None, *, register: bool = True) -> int:
    """A read-only descriptor of a regular file, registered as an input of the running command
    (`register=False` only for a command's own state that it rewrites, such as a cache).

    The file is opened without blocking, so a FIFO or a device named by mistake
    (or reached through a symlink) is refused instead of waiting forever or
    reading /dev/zero until memory runs out. `name` is how messages call it
    (`--calibration c4.txt`); the caller closes the descriptor.
    """
    shown = name or os.fsdecode(path)
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise HtsrError(f"{shown}: {os_reason(error)}") from None
    except ValueError:  # an embedded NUL byte
        raise HtsrError(f"{shown!r}: not a valid path (it contains a NUL character)") from None
    try:
        _check_regular(os.fstat(fd), shown)
    except BaseException:
        os.close(fd)
        raise
    if register:
        register_input(path)
    return fd


def read_bounded(
    path: PathLike, limit: Limit, name: str | None = None, what: str = "this kind of file", *, register: bool = True
) -> bytes:
    """The bytes of a regular file no larger than `limit`, checked before reading (`open_input`)."""
    shown = name or os.fsdecode(path)
    fd = open_input(path, name, register=register)
    cap = limit.value()
    try:
        size = os.fstat(fd).st_size
        if size > cap:
            raise HtsrError(f"{shown}: {size:,} bytes is too large for {what} {limit.beyond()}")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(cap + 1)
    except OSError as error:
        raise HtsrError(f"{shown}: {os_reason(error)}") from None
    finally:
        os.close(fd)
    if len(data) > cap:  # grew while being read
        raise HtsrError(f"{shown}: too large for {what} {limit.beyond()}")
    return data


def read_document(path: PathLike, name: str | None = None, *, register: bool = True) -> bytes:
    """The bytes of a small input document (report, schedule, plan, config, index): regular files
    only, at most `DOCUMENT_BYTES` (`register`: see `open_input`)."""
    return read_bounded(path, DOCUMENT_BYTES, name, register=register)


def read_text(path: PathLike, name: str | None = None, limit: int | None = None) -> str:
    """A UTF-8 text file (its first `limit` characters when given), at most `TEXT_BYTES`.

    With `limit`, only as many bytes as that many characters can take are read,
    so a corpus larger than the cap still gives its beginning.
    """
    shown = name or os.fsdecode(path)
    if limit is None:
        data = read_bounded(path, TEXT_BYTES, name, "a text file")
    else:
        fd = open_input(path, name)
        try:
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(4 * limit)  # UTF-8 takes at most 4 bytes a character
        except OSError as error:
            raise HtsrError(f"{shown}: {os_reason(error)}") from None
        finally:
            os.close(fd)
        data = _whole_characters(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HtsrError(f"{shown}: not UTF-8 text (byte {error.start})") from None
    return text if limit is None else text[:limit]


def _whole_characters(data: bytes) -> bytes:
    """`data` without a UTF-8 character cut at its end by a bounded read."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return data
        if byte >= 0xC0:  # a lead byte: keep it only if its character is complete
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if back >= needed else data[:-back]
    return data


def parse_json(data: bytes, source: str) -> Any:
    """The JSON value in `data`; malformed, undecodable or absurdly nested input is an HtsrError."""
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise HtsrError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except RecursionError:
        raise HtsrError(f"{source}: JSON nested too deeply {DOCUMENT_DEPTH.beyond()}") from None
    except ValueError as error:  # JSONDecodeError, and integers too long to convert
        raise HtsrError(f"{source}: not valid JSON ({error})") from None
    check_depth(value, source)
    return value


def check_depth(value: Any, source: str) -> None:
    """Refuse a parsed document nested deeper than `DOCUMENT_DEPTH` (walked without recursion)."""
    cap = DOCUMENT_DEPTH.value()
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > cap:
            raise HtsrError(f"{source}: nested too deeply {DOCUMENT_DEPTH.beyond()}")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def read_json(path: PathLike, name: str | None = None) -> Any:
    """A JSON document from a file: `read_document`, then `parse_json`."""
    shown = name or os.fsdecode(path)
    return parse_json(read_document(path, name), shown)


def copy_regular_file(source: PathLike, target: PathLike) -> None:
    """Copy a regular file's bytes to a new file `target` (checked on the open descriptor, so a FIFO
    or device swapped in after a check is still refused)."""
    fd = open_input(source)
    try:
        with os.fdopen(fd, "rb", closefd=False) as reading, open(target, "xb") as writing:
            shutil.copyfileobj(reading, writing, 1 << 20)
    except OSError as error:
        raise HtsrError(f"{os.fsdecode(target)}: {os_reason(error)}") from None
    finally:
        os.close(fd)


def require_regular_file(path: PathLike) -> None:
    """An input that a library opens by its path (safetensors): it must be a regular file."""
    name = os.fsdecode(path)
    try:
        info = os.stat(name)
    except OSError as error:
        raise input_error(name, error) from None
    except ValueError:  # an embedded NUL byte
        raise HtsrError(f"{name!r}: not a valid path (it contains a NUL character)") from None
    _check_regular(info, name)
    register_input(name)


def _check_regular(info: os.stat_result, name: str) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise HtsrError(f"{name}: is a directory, expected a file")
    if not stat.S_ISREG(info.st_mode):
        raise HtsrError(f"{name}: not a regular file ({_file_kind(info.st_mode)}); give a file")


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a file"


def _resolved(path: PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _identity(path: PathLike) -> tuple[int, int] | None:
    """(device, inode) of an existing file, following symlinks: equal for hard links."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _input_files(path: Path) -> Iterator[Path]:
    """An input and, for a directory, the files directly inside it (a checkpoint's shards)."""
    yield path
    if path.is_dir():
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    yield Path(entry.path)
        except OSError:
            return  # an unreadable directory: its reader reports it


def check_output_paths(outputs: Mapping[str, PathLike | None], inputs: Iterable[PathLike | None]) -> None:
    """Refuse outputs that would overwrite an input or each other, before any work is done.

    The one check every command that writes calls first:

        check_output_paths({"-o": output, "--save-spectra": spectra}, [checkpoint, baseline, config])

    `outputs` maps how the user named each output ("-o", "--save-spectra") to its
    path (None when not given); `inputs` are the files and directories read
    (strings that are not paths, such as hub ids, are ignored), to which every
    input registered so far in the command is added. An output may not resolve
    (symlinks and `..` followed) to an input file, be a hard link to an input or
    to a file inside an input directory (a shard), lie inside an input
    directory, or (as a directory) contain an input; two outputs may not be one
    file. Outputs that are devices or pipes (`-o /dev/null`) are never inputs.
    """
    given: dict[str, Path] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        try:
            given[flag] = _resolved(path)
        except (OSError, ValueError) as error:
            raise HtsrError(f"{flag} {os.fsdecode(path)}: {error}") from None
    sources = _sources(inputs)
    identities = _identities(sources)
    for flag, target in given.items():
        _refuse_overwriting(f"{flag} {os.fsdecode(outputs[flag])}", target, sources, identities)
    flags = list(given)
    for i, first in enumerate(flags):
        for second in flags[i + 1 :]:
            same = given[first] == given[second]
            if not same and not _is_special(given[first]):
                first_id = _identity(given[first])
                same = first_id is not None and first_id == _identity(given[second])
            if same:
                raise HtsrError(
                    f"{first} and {second} name the same file ({os.fsdecode(outputs[first])}); give each its own"
                )


def check_not_an_input(path: PathLike) -> None:
    """At the moment of writing: `path` is none of the inputs the running command has registered.

    `check_output_paths` ran before the work, when some inputs (files beside a
    checkpoint, found while reading it) were not known yet; this catches those.
    """
    if not _inputs or not _inputs.paths:
        return
    try:
        target = _resolved(path)
    except (OSError, ValueError):
        return
    sources = sorted(_inputs.paths)
    _refuse_overwriting(os.fsdecode(path), target, sources, _identities(sources))


def _sources(inputs: Iterable[PathLike | None]) -> list[Path]:
    """The inputs that exist on disk, resolved, with those the command has registered."""
    sources: set[Path] = set(registered_inputs())
    for path in inputs:
        if path is None:
            continue
        try:
            if os.path.lexists(os.fspath(path)):
                sources.add(_resolved(path))
        except (OSError, ValueError):
            continue
    return sorted(sources)


def _identities(sources: list[Path]) -> dict[tuple[int, int], Path]:
    return {
        identity: file
        for source in sources
        for file in _input_files(source)
        if (identity := _identity(file)) is not None
    }


def _refuse_overwriting(
    named: str, target: Path, sources: list[Path], identities: dict[tuple[int, int], Path]
) -> None:
    if _is_special(target):
        return
    for source in sources:
        if target == source:
            raise HtsrError(f"{named}: is an input of this command; refusing to overwrite it")
        if source.is_dir() and target.is_relative_to(source):
            raise HtsrError(f"{named}: lies inside the input directory {source}; write it elsewhere")
        if source.is_relative_to(target):  # a directory output would replace its own input
            raise HtsrError(f"{named}: contains the input {source}; write it elsewhere")
    identity = _identity(target)
    if identity is not None and identity in identities:
        raise HtsrError(
            f"{named}: is an input of this command (the same file as {identities[identity]}); "
            "refusing to overwrite it"
        )


def _is_special(path: Path) -> bool:
    """A device, FIFO or socket: written into, never replaced, never an input's file."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_atomic(path: PathLike, data: str | bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    Text is written as UTF-8 whatever the locale. Any OS error (a read-only
    directory, a full disk, a file-size limit, a name too long) becomes
    `PATH: <reason>`; the old file is kept and the temp file removed.
    """
    path = Path(path)
    check_not_an_input(path)
    payload = data.encode("utf-8", _SURROGATES) if isinstance(data, str) else data
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:
        raise HtsrError(f"{path}: {os_reason(error)}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise HtsrError(f"{path}: is a directory, expected a file name")
    if mode is not None and not stat.S_ISREG(mode):
        # A device, pipe or /dev/stdout: renaming over it would replace the
        # device node itself (as root, /dev/null), so stream into it instead.
        _write_through(path, payload)
        return
    directory = path.parent if str(path.parent) else Path(".")
    # The temp name stays short: a target name near the 255-byte limit must
    # not fail because of the prefix and suffix around it.
    prefix = f".{path.name[:40]}."
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    except FileNotFoundError:
        raise HtsrError(f"{path}: directory {directory} does not exist") from None
    except OSError as error:
        raise HtsrError(f"{path}: {os_reason(error)}") from None
    _live_temp_files.add(tmp)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())  # a full disk shows here, before the old file is replaced
        # mkstemp creates 0600; give the file the permissions open() would have.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise HtsrError(f"{path}: {os_reason(error)}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _live_temp_files.discard(tmp)


def _encode_surrogates(error: UnicodeError) -> tuple[bytes | str, int]:
    """The bytes an undecodable file name stood for (surrogateescape), and U+FFFD for any other
    lone surrogate (a `\\ud800` in a report's layer name): text output never fails on either."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = bytearray()
    for char in error.object[error.start : error.end]:
        code = ord(char)
        out += bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else "\ufffd".encode()
    return bytes(out), error.end


_SURROGATES = "htsr-surrogates"
codecs.register_error(_SURROGATES, _encode_surrogates)


def _write_through(path: Path, payload: bytes) -> None:
    try:
        with open(path, "wb") as handle:
            handle.write(payload)
    except OSError as error:
        raise HtsrError(f"{path}: {os_reason(error)}") from None


def remove_live_temp_files() -> None:
    """Remove every temp file and staged directory a write in progress has created
    (called when a signal stops the run)."""
    for tmp in list(_live_temp_files):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _live_temp_files.discard(tmp)
    for staging in list(_live_temp_directories):
        shutil.rmtree(staging, ignore_errors=True)
        _live_temp_directories.discard(staging)


@contextmanager
def staged_directory(target: PathLike) -> Iterator[Path]:
    """A fresh directory beside `target` to write a directory of outputs into (plots).

    When the block ends without error its files go into `target`: the whole
    directory is renamed into place when `target` does not exist, else each
    file is renamed into it. An error or a stop removes it, so a run stopped
    half way leaves no half-drawn directory.
    """
    target = Path(target)
    if os.path.lexists(target) and not target.is_dir():
        raise HtsrError(f"{target}: exists and is not a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name[:40]}.", suffix=".tmp", dir=target.parent))
    except OSError as error:
        raise HtsrError(f"{target}: {os_reason(error)}") from None
    _live_temp_directories.add(str(staging))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private
        if not os.path.lexists(target):
            os.rename(staging, target)
        else:
            _move_into(staging, target)
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise HtsrError(f"{target}: {os_reason(error)}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _live_temp_directories.discard(str(staging))


def _move_into(staging: Path, target: Path) -> None:
    for directory, _, files in os.walk(staging):
        relative = Path(directory).relative_to(staging)
        (target / relative).mkdir(exist_ok=True)
        for name in files:
            os.replace(Path(directory) / name, target / relative / name)


def current_umask() -> int:
    """The process's file-mode creation mask (it can only be read by setting it and back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
