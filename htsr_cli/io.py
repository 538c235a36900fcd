"""Files in and out: inputs read as regular files with clear errors, outputs written atomically.

Every OS error becomes one `HtsrError` naming the path and the reason
(`out.json: permission denied`), so nothing reaches the user as a traceback.
A write goes to a temp file beside the target and is renamed over it at the
end: a failed or interrupted run keeps the old file and leaves no temp file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from htsr_cli.errors import HtsrError

PathLike = str | os.PathLike

# Saved reports, schedules, configs and shard indexes are small JSON/TOML/YAML
# documents (a 70B model's report is a few MB); anything far larger is not one.
MAX_DOCUMENT_BYTES = 512 << 20

# Temp files this process has created and not yet renamed or removed: a
# signal handler removes them when the process is stopped from outside.
_live_temp_files: set[str] = set()


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


def read_document(path: PathLike) -> bytes:
    """The bytes of a small input document (report, schedule, config, index): regular files only.

    The file is opened without blocking, so a FIFO or a device named by
    mistake is refused instead of waiting forever, and its size is checked
    before anything is read.
    """
    name = os.fsdecode(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise input_error(name, error) from None
    except ValueError:  # an embedded NUL byte
        raise HtsrError(f"{name!r}: not a valid path (it contains a NUL character)") from None
    try:
        info = os.fstat(fd)
        _check_regular(info, name)
        if info.st_size > MAX_DOCUMENT_BYTES:
            raise HtsrError(
                f"{name}: {info.st_size:,} bytes is too large for this kind of file "
                f"(at most {MAX_DOCUMENT_BYTES >> 20} MiB)"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as error:
        raise input_error(name, error) from None
    finally:
        os.close(fd)
    if len(data) > MAX_DOCUMENT_BYTES:  # grew while being read
        raise HtsrError(f"{name}: too large for this kind of file (at most {MAX_DOCUMENT_BYTES >> 20} MiB)")
    return data


def require_regular_file(path: PathLike) -> None:
    """An input that a library opens by its path (safetensors): it must be a regular file."""
    name = os.fsdecode(path)
    try:
        info = os.stat(name)
    except OSError as error:
        raise input_error(name, error) from None
    _check_regular(info, name)


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
    (strings that are not paths, such as hub ids, are ignored). An output may
    not resolve (symlinks followed) to an input file, be a hard link to an
    input or to a file inside an input directory (a shard), lie inside an input
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
    sources: list[Path] = []
    for path in inputs:
        if path is None:
            continue
        try:
            if os.path.lexists(os.fspath(path)):
                sources.append(_resolved(path))
        except (OSError, ValueError):
            continue
    identities = {
        identity: file
        for source in sources
        for file in _input_files(source)
        if (identity := _identity(file)) is not None
    }
    for flag, target in given.items():
        named = f"{flag} {os.fsdecode(outputs[flag])}"
        if _is_special(target):
            continue
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
    payload = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
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


def _write_through(path: Path, payload: bytes) -> None:
    try:
        with open(path, "wb") as handle:
            handle.write(payload)
    except OSError as error:
        raise HtsrError(f"{path}: {os_reason(error)}") from None


def remove_live_temp_files() -> None:
    """Remove every temp file a write in progress has created (called when a signal stops the run)."""
    for tmp in list(_live_temp_files):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _live_temp_files.discard(tmp)


def current_umask() -> int:
    """The process's file-mode creation mask (it can only be read by setting it and back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
