"""What the benchmark ran on: CPU, cores, memory, GPU and library versions.

    from machine import describe_machine, library_versions
    machine = describe_machine()   # {"slug": "cpu-amd-epyc-7b13-2-cores", "cpu": ..., "gpu": None, ...}
"""

from __future__ import annotations

import os
import platform
import re
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch


def _cpuinfo_field(name: str) -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return None
    for line in cpuinfo.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def _memory_gib() -> float | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
    return int(match[1]) / 2**20 if match else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def describe_machine() -> dict:
    cpu = _cpuinfo_field("model name") or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    # Results are kept per machine; the GPU (when there is one) is what tells machines apart.
    slug = _slug(f"gpu {gpu}") if gpu else _slug(f"cpu {cpu} {cores} cores")
    return {"slug": slug, "cpu": cpu, "cores": cores, "memory_gib": _memory_gib(), "gpu": gpu}


def library_versions() -> dict:
    import htsr_cli

    versions = {"python": platform.python_version(), "torch": torch.__version__, "htsr": htsr_cli.__version__}
    for package in ("safetensors", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def result_header(schema: str, make_target: str, script: str) -> dict:
    """The fields a benchmark's raw results start with: what, where, with which libraries, when, how run."""
    arguments = sys.argv[1:]
    return {
        "schema": schema,
        "machine": describe_machine(),
        "versions": library_versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"make {make_target}" if not arguments else f"python benchmarks/{script} " + " ".join(arguments),
    }
