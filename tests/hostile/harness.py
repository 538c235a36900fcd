"""Running generated hostile cases through the real command line, in a child process under a memory limit.

Starting a process costs seconds (torch), so a batch of cases runs in one
child: each case is `htsr ARGS...` invoked in-process there, under
RLIMIT_AS, with its exit code, stderr and seconds reported back. A case that
exhausts memory dies with a MemoryError traceback (exit 1), which the checks
below catch as clearly as a hang (the timeout) or a wrong exit code.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hypothesis import Phase, settings

REPO = Path(__file__).resolve().parents[2]
# Each example is a batch of cases run in one child process (seconds each); a failing
# batch is reported as it is, not shrunk (shrinking would rerun the child many times).
def batches(count: int) -> settings:
    return settings(max_examples=count, phases=[Phase.explicit, Phase.generate])


# torch and transformers map about 1 GB of address space; a hostile input that
# makes htsr allocate what it claims needs far more than the rest.
MEMORY_LIMIT = 3 << 30
_CHILD = r"""
import json, os, sys, time
from typer.testing import CliRunner
from htsr_cli.cli.app import app
from htsr_cli.io import remove_live_temp_files
cases = json.loads(sys.stdin.read())
results = []
for case in cases:
    os.environ.update(case.get("env", {}))
    started = time.monotonic()
    result = CliRunner().invoke(app, case["args"])
    remove_live_temp_files()
    for name in case.get("env", {}):
        os.environ.pop(name, None)
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    error = "Traceback:\n" + "".join(__import__("traceback").format_exception(result.exception)) if crashed else ""
    results.append({"code": result.exit_code, "stderr": result.stderr + error, "stdout": result.stdout[-2000:],
                    "seconds": time.monotonic() - started})
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Outcome:
    args: list[str]
    code: int
    stderr: str
    stdout: str
    seconds: float


def _limit_memory(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def run_cases(cases: list[dict], memory: int = MEMORY_LIMIT, timeout: float = 600, cwd: Path | None = None) -> list[Outcome]:
    """Run each case ({"args": [...], "env": {...}}) as `htsr ARGS` in one child process limited to `memory` bytes."""
    payload = [{"args": [str(arg) for arg in case["args"]], "env": case.get("env", {})} for case in cases]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], input=json.dumps(payload), capture_output=True, text=True,
        timeout=timeout, env=env, cwd=cwd, preexec_fn=_limit_memory(memory),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [Outcome(case["args"], **result) for case, result in zip(payload, json.loads(done.stdout))]


def assert_refused(outcome: Outcome, *needles: str, seconds: float = 60) -> str:
    """Exit 2, exactly one `htsr: error:` line naming what is wrong, no traceback, within `seconds`."""
    lines = outcome.stderr.strip().splitlines()
    assert outcome.code == 2, (outcome.args, outcome.code, outcome.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("htsr: error: "), (outcome.args, outcome.stderr)
    assert "Traceback" not in outcome.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert outcome.seconds < seconds, (outcome.args, outcome.seconds)
    return lines[0]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and link under `roots`: sha256 of a file's bytes, the target of a link."""
    found = {}
    for root in roots:
        paths = [root] if not root.is_dir() or root.is_symlink() else sorted(root.rglob("*"))
        for path in paths:
            if path.is_symlink():
                found[str(path)] = "-> " + os.readlink(path)
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                found[str(path)] = "dir"
            elif path.exists():
                found[str(path)] = "special"
    return found
