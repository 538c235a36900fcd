"""Writing result files atomically: a temp file beside the target, then rename.

A run that fails half way never leaves a partial file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from htsr_cli.errors import HtsrError


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and bind mounts too
    except OSError:
        return False


def check_output_paths(outputs: dict[str, str | os.PathLike | None], inputs: list[str | os.PathLike]) -> None:
    """Refuse outputs that would overwrite an input or each other, before any work is done.

    `outputs` maps how the user named each output ("-o", "--save-spectra") to its
    path (None when not given); `inputs` are the files and directories read. An
    output may not resolve (symlinks followed) to an input file, be a hard link
    to one, lie inside an input directory, or (as a directory) contain an input;
    two outputs may not be one file.
    Outputs that are devices or pipes (`-o /dev/null`) are never inputs.
    """
    given = {flag: _resolved(path) for flag, path in outputs.items() if path is not None}
    sources = [_resolved(path) for path in inputs if path is not None and os.path.lexists(os.fspath(path))]
    for flag, target in given.items():
        if target.exists() and not (target.is_file() or target.is_dir()):
            continue
        for source in sources:
            if target == source or _same_file(target, source):
                raise HtsrError(f"{flag} {outputs[flag]}: is an input of this command; refusing to overwrite it")
            if source.is_dir() and target.is_relative_to(source):
                raise HtsrError(
                    f"{flag} {outputs[flag]}: lies inside the input directory {source}; write it elsewhere"
                )
            if source.is_relative_to(target):  # a directory output would replace its own input
                raise HtsrError(f"{flag} {outputs[flag]}: contains the input {source}; write it elsewhere")
    flags = list(given)
    for i, first in enumerate(flags):
        for second in flags[i + 1 :]:
            if given[first] == given[second] or _same_file(given[first], given[second]):
                raise HtsrError(f"{first} and {second} name the same file ({outputs[first]}); give each its own")


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    if path.exists() and not path.is_file():
        # A device, pipe or /dev/stdout: renaming over it would replace the
        # device node itself (as root, /dev/null), so stream into it instead.
        if path.is_dir():
            raise HtsrError(f"{path}: is a directory, expected a file name")
        with open(path, "wb" if isinstance(data, bytes) else "w") as handle:
            handle.write(data)
        return
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise HtsrError(f"{path}: directory {directory} does not exist")
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
        # mkstemp creates 0600; give the file the permissions open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
