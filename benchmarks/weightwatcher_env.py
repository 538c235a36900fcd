"""WeightWatcher 0.7.7 in a venv of its own, for the baseline row.

    from weightwatcher_env import weightwatcher_python
    python, versions = weightwatcher_python(Path("benchmarks/work"))  # creates benchmarks/work/ww-venv once

The venv gets htsr's own torch first (the same version, pinned: no later
requirement can swap in a CUDA build), then weightwatcher==0.7.7 and htsr's
transformers version, so both tools build the same model from the same
libraries. torchvision is never installed (environment.md). A venv already
made for the same requirements is reused; the pip output goes to
ww-venv.log beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from measure import last_line

WEIGHTWATCHER = "weightwatcher==0.7.7"
VENV_NAME = "ww-venv"
REPORTED_PACKAGES = ("weightwatcher", "torch", "transformers", "numpy", "scipy", "pandas", "powerlaw")
# What WeightWatcher's imports must not pull in here.
FORBIDDEN_PACKAGES = ("torchvision",)

_VERSIONS_SCRIPT = """
import json
from importlib import metadata
print(json.dumps({name: metadata.version(name) for name in %r}))
""" % (REPORTED_PACKAGES,)


def requirements() -> list[str]:
    """torch and transformers pinned to the versions htsr runs with, then WeightWatcher."""
    torch_version = metadata.version("torch").split("+")[0]  # the local tag (+cpu) is the wheel's, not pip's
    return [f"torch=={torch_version}", WEIGHTWATCHER, f"transformers=={metadata.version('transformers')}"]


def offline_cpu_env() -> dict[str, str]:
    """WeightWatcher runs offline and on the CPU (it switches to CUDA by itself when it sees one)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


def weightwatcher_python(work: Path) -> tuple[Path, dict[str, str]]:
    """The venv's python and its package versions; builds the venv when missing or stale."""
    venv = work / VENV_NAME
    python = venv / "bin" / "python"
    marker = venv / "requirements.txt"
    wanted = "\n".join(requirements()) + "\n"
    if not (python.is_file() and marker.is_file() and marker.read_text() == wanted):
        _build(venv, python, wanted, work / f"{VENV_NAME}.log")
        marker.write_text(wanted)
    versions = subprocess.run(
        [str(python), "-c", _VERSIONS_SCRIPT], capture_output=True, text=True, check=True, env=offline_cpu_env()
    )
    return python, json.loads(versions.stdout)


def _build(venv: Path, python: Path, wanted: str, log_path: Path) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    torch_pin, *rest = wanted.split()
    with log_path.open("w") as log:
        _step([sys.executable, "-m", "venv", str(venv)], log)
        _step([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], log)
        _step([str(python), "-m", "pip", "install", "--quiet", torch_pin], log)
        # torch is named again so that pip keeps the pinned build while resolving the rest.
        _step([str(python), "-m", "pip", "install", "--quiet", torch_pin, *rest], log)
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    )
    installed = {package["name"].lower(): package["version"] for package in json.loads(listed.stdout)}
    unwanted = [name for name in FORBIDDEN_PACKAGES if name in installed]
    if unwanted:
        raise RuntimeError(f"{venv}: WeightWatcher's requirements installed {', '.join(unwanted)}")
    htsr_torch = metadata.version("torch")
    if installed.get("torch") != htsr_torch:
        raise RuntimeError(f"{venv}: torch {installed.get('torch')} installed, htsr runs torch {htsr_torch}")
    smoke = subprocess.run(
        [str(python), "-c", "import weightwatcher, transformers"], capture_output=True, text=True, env=offline_cpu_env()
    )
    if smoke.returncode != 0:
        raise RuntimeError(f"{venv}: import weightwatcher failed: {last_line(smoke.stderr) or 'no message'}")


def _step(command: list[str], log) -> None:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command[-3:])}` failed (exit {result.returncode}); see {log.name}")
