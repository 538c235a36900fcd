"""Wall time and peak RSS of one command, each in a fresh process.

    from measure import measure
    result = measure(["htsr", "analyze", "model.pth", "--quiet"], timeout_s=600)
    result.wall_s, result.peak_rss_mb, result.error
    parse_profile(stderr)   # {"read": 0.125, "solve": 28.3, ...} from `htsr analyze --profile`'s line

Peak RSS is the command's own `ru_maxrss`, read with wait4() on its pid. The
command is not started by the caller but by a tiny wrapper (this file run as
`python -S measure.py RESULT -- COMMAND...`, about 10 MB): Linux carries the
parent's peak RSS into a child at exec, so a child of the benchmark runner
(which has torch loaded) would report at least the runner's size.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Measurement:
    wall_s: float | None
    peak_rss_mb: float | None
    error: str | None  # one line: why the command failed, or None
    output: str  # the command's last line of stdout


def measure(command: list[str], timeout_s: float, env: dict[str, str] | None = None) -> Measurement:
    """Run `command` in a fresh process under the wrapper and measure it; never raises for a failed command."""
    with tempfile.TemporaryDirectory(prefix="htsr-bench-") as scratch:
        result_path = Path(scratch) / "result.json"
        wrapper = [sys.executable, "-S", str(Path(__file__).resolve()), str(result_path), "--", *command]
        # A new session lets a timeout kill the wrapper and the command together.
        process = subprocess.Popen(
            wrapper, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(process)
            return Measurement(None, None, f"timed out after {timeout_s:g} s", "")
        except BaseException:  # Ctrl-C reaches only the runner: its own session keeps the command running
            _kill(process)
            raise
        output = last_line(stdout)
        if not result_path.is_file():
            return Measurement(None, None, f"measurement wrapper failed: {last_line(stderr)}", output)
        result = json.loads(result_path.read_text())
    if result["returncode"] != 0:
        reason = last_line(stderr) or "no message"
        return Measurement(None, None, f"exit code {result['returncode']}: {reason}", output)
    return Measurement(result["wall_s"], result["peak_rss_bytes"] / 2**20, None, output)


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def parse_profile(stderr: str) -> dict[str, float]:
    """Stage -> seconds from `htsr analyze --profile`'s line ("profile: read 0.125 s | solve 28.3 s | ...")."""
    _, found, line = " ".join(stderr.split()).partition("profile:")
    if not found:
        raise ValueError(f"no profile line in the output: {last_line(stderr) or 'nothing'}")
    return {stage: float(seconds) for stage, seconds in re.findall(r"([A-Za-z_]+) (\d+(?:\.\d+)?) s\b", line)}


def _run_and_report(result_path: str, command: list[str]) -> None:
    """The wrapper: spawn `command`, wait for it, write its wall time and peak RSS as JSON."""
    start = time.perf_counter()
    pid = os.posix_spawnp(command[0], command, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall_s = time.perf_counter() - start
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    report = {
        "wall_s": wall_s,
        "peak_rss_bytes": usage.ru_maxrss * scale,
        "returncode": os.waitstatus_to_exitcode(status),
    }
    Path(result_path).write_text(json.dumps(report))


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: python -S measure.py RESULT.json -- COMMAND [ARGS...]")
    _run_and_report(sys.argv[1], sys.argv[3:])
