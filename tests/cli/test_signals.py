"""Ctrl-C and termination at any moment (issue 14 items 19, 20), with real processes and real signals.

The child runs the console script's entry point with one pause planted at a
chosen moment (an import during start-up, the solve, the rename of a written
file): it says READY on stderr and sleeps, and the test sends the signal from
outside. Whatever the moment: exit 128 + signal, one `htsr: interrupted` /
`htsr: terminated` line, no traceback, no temp file, the old output kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import FIXTURES

CNN = FIXTURES / "tiny-cnn-trained.pth"

# READY is written once: two solves run at once on a multi-core CPU, and both may reach the pause.
PAUSE = """
import sys, threading, time
_ready = threading.Lock()
def pause():
    if _ready.acquire(blocking=False):
        sys.stderr.write("READY\\n")
        sys.stderr.flush()
    time.sleep(120)
"""


def pause_on_import(module: str) -> str:
    return f"""
import importlib.abc
class Pause(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            pause()
        return None
sys.meta_path.insert(0, Pause())
"""


# Where the pause is planted: a module import (start-up, torch), a call in the pipeline, the final rename.
PAUSE_AT = {
    "start-up (importing rich)": pause_on_import("rich.console"),
    "importing torch": pause_on_import("torch"),
    "solving a layer": """
import htsr_cli.engine.pipeline
real_fit = htsr_cli.engine.pipeline.guarded_fit
def paused_fit(*args, **kwargs):
    pause()
    return real_fit(*args, **kwargs)
htsr_cli.engine.pipeline.guarded_fit = paused_fit
""",
    "inside a library that swallows the interrupt": """
import htsr_cli.engine.pipeline
real_fit = htsr_cli.engine.pipeline.guarded_fit
calls = []
def swallowing_fit(*args, **kwargs):
    if not calls:
        calls.append(1)
        try:
            pause()
        except BaseException:  # as some libraries do in imports and finalizers
            pass
    return real_fit(*args, **kwargs)
htsr_cli.engine.pipeline.guarded_fit = swallowing_fit
""",
    "renaming the written file": """
import os
real_replace = os.replace
def paused_replace(source, target):
    if str(target).endswith("out.json"):
        pause()
    return real_replace(source, target)
os.replace = paused_replace
""",
}


def run_and_signal(tmp_path, moment: str, signum: int) -> tuple[int, str]:
    script = PAUSE + PAUSE_AT[moment] + textwrap.dedent(
        f"""
        sys.argv = ["htsr", "analyze", {str(CNN)!r}, "-f", "json", "-o", {str(tmp_path / "out.json")!r}, "--quiet"]
        from htsr_cli.cli import main
        main()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        assert child.stderr.readline() == "READY\n"
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    return child.returncode, stderr


@pytest.mark.parametrize("moment", list(PAUSE_AT))
def test_ctrl_c_at_any_moment_exits_130_without_a_traceback(moment, tmp_path):
    (tmp_path / "out.json").write_text("old")
    code, stderr = run_and_signal(tmp_path, moment, signal.SIGINT)
    assert (code, stderr) == (130, "htsr: interrupted\n")
    assert sorted(os.listdir(tmp_path)) == ["out.json"] and (tmp_path / "out.json").read_text() == "old"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_termination_while_the_temp_file_exists_removes_it(signum, code, tmp_path):
    (tmp_path / "out.json").write_text("old")
    assert run_and_signal(tmp_path, "renaming the written file", signum) == (code, "htsr: terminated\n")
    assert sorted(os.listdir(tmp_path)) == ["out.json"] and (tmp_path / "out.json").read_text() == "old"


def test_sigterm_during_the_solve(tmp_path):
    assert run_and_signal(tmp_path, "solving a layer", signal.SIGTERM) == (143, "htsr: terminated\n")
    assert os.listdir(tmp_path) == []
