"""Writing result files atomically: a temp file beside the target, then rename.

A run that fails half way never leaves a partial file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from htsr_cli.errors import HtsrError


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
