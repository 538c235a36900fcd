"""The `htsr` command line: a thin shell over the library API, one module per command."""

from __future__ import annotations

import os
import sys

# torch reads this once, at its first CPU allocation: large tensors (a 2048 x 2048
# float64 Gram is 32 MB) are then madvised onto transparent huge pages, so each is
# 16 page faults instead of 8192. On the 4-layer LLaMA-shaped bench directory
# (2 cores) system time fell from about 5.0 to 2.8 s and wall time by about 8%.
# A user's own setting (THP_MEM_ALLOC_ENABLE=0) is kept.
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"


def main() -> None:
    """The `htsr` console script.

    Signal handlers go in before anything heavy is imported, so Ctrl-C during
    start-up ends the run like Ctrl-C at any other time: `htsr: interrupted`,
    exit 130, no traceback, no temp file left behind. Under torchrun every rank
    runs this; rank 0 runs the command and the others serve its analyses
    (`_ranks.run_command`).
    """
    os.environ.setdefault(HUGE_PAGES_VARIABLE, "1")  # before torch is imported (see above)
    from htsr_cli.cli import _signals

    _signals.install()
    try:
        from htsr_cli.cli._errors import flush_stdout
        from htsr_cli.cli._ranks import run_command
        from htsr_cli.cli.app import app

        _signals.raise_if_stopped()
        code = run_command(lambda: flush_stdout(app(prog_name="htsr", standalone_mode=False)))
    except BaseException:
        if _signals.stopping_signal() is None:
            raise  # not a signal: a bug, whose traceback is wanted
        code = None
    signum = _signals.stopping_signal()
    if signum is not None:
        _stop(signum)
    sys.exit(code)


def _stop(signum: int) -> None:
    """End at once after a stop signal, even if some library swallowed its exception.

    os._exit rather than sys.exit: a clean shutdown would wait for background
    threads (a transformers import computing the module order can take seconds).
    """
    from htsr_cli.cli import _signals
    from htsr_cli.io import remove_live_temp_files

    _signals.ignore_further()
    remove_live_temp_files()
    code = _signals.announce(signum)
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)
