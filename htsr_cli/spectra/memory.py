"""How much memory there is for solving (`--max-memory`), and sizes in words.

A layer whose solve would need more than the budget is skipped with a reason
before anything is allocated, so a header claiming a 100000 x 100000 matrix
costs nothing. Without `--max-memory` the budget is the memory available when
the analysis starts: free GPU memory on CUDA; on the CPU, MemAvailable, capped
by the container's cgroup limit when there is one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

_CGROUP_V2 = Path("/sys/fs/cgroup")


def available_bytes(device: torch.device) -> int | None:
    """Bytes a solve on `device` can allocate now; None where the platform does not say."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Blocks the caching allocator holds but does not use are free to htsr too.
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    host = _meminfo_available()
    limit = _cgroup_headroom()
    if host is None:
        return limit
    return host if limit is None else min(host, limit)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _cgroup_headroom() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), when a limit is set."""
    try:
        entry = Path("/proc/self/cgroup").read_text().splitlines()[0]
        group = _CGROUP_V2 / entry.split("::", 1)[1].lstrip("/")
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((group / "memory.current").read_text()))
    except (OSError, ValueError, IndexError):
        return None


def format_bytes(size: float) -> str:
    """1536 -> '1.5 KiB': binary units, as `free -h` prints them."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    index = 0
    while size >= 1024 and index < len(units) - 1:
        size /= 1024
        index += 1
    return f"{size:.0f} B" if index == 0 else f"{size:.1f} {units[index]}"
