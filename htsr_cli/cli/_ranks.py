"""One command, several processes: `htsr` under torchrun.

    torchrun --nproc-per-node 8 -m htsr_cli analyze ./llama-70b -f json -o report.json
    torchrun --nproc-per-node 2 $(which htsr) gate ./model --baseline main.json

Rank 0 runs the command as it would alone: it parses the options, prints, and
writes every file. The other ranks never run the command. They serve rank 0's
analyses: each `analyze()` rank 0 starts is announced to them (through
torch.distributed's store) and they join it, solving their share, until rank
0's command is over; then they exit with rank 0's exit code. So every command
that analyses works under torchrun, and only rank 0 prints or writes.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from htsr_cli.cli._errors import report_error
from htsr_cli.errors import HtsrError

if TYPE_CHECKING:
    from htsr_cli.engine.distributed import Cluster


def run_command(command: Callable[[], int]) -> int:
    """Run `command` (the whole CLI, returning its exit code) on this process's rank."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):  # not under torchrun: no torch import here
        return command()
    from htsr_cli.engine import distributed# lazy torch, see app.py

    try:
        launch = distributed.Launch.from_env()
        if launch is None:
            return command()
        cluster = distributed.join(launch, leading=launch.rank == 0)
    except HtsrError as error:
        report_error(str(error))
        return distributed.USAGE_ERROR
    if launch.rank != 0:
        return _serve(cluster)
    code = distributed.FAILURE
    try:
        code = command()
    finally:  # a bug's traceback too: the other ranks must not wait for work that never comes
        cluster.release(code)
    return code


def _serve(cluster: Cluster) -> int:
    """A rank other than 0: join rank 0's analyses until it sends its exit code."""
    from htsr_cli.engine.pipeline import analyze
    from htsr_cli.engine.distributed import RankFailed, job_source, settings_from_json

    # torchrun gives every rank the same terminal: a stray print here would land in
    # the middle of rank 0's table or JSON. Errors and tracebacks stay on stderr.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    while True:
        try:
            job = cluster.next_job()
        except RankFailed as error:  # rank 0 is gone: nobody else can say so
            report_error(str(error))
            cluster.close()
            return error.exit_code
        except KeyboardInterrupt:
            return 130
        if "exit_code" in job:
            cluster.leave()
            return int(job["exit_code"])
        try:
            analyze(
                job_source(job),
                settings_from_json(job["settings"]),
                keep_spectra=job["keep_spectra"],
                profile=job["profile"],
            )
        except HtsrError:
            pass  # posted for rank 0, which prints it and sends the exit code
        except KeyboardInterrupt:
            return 130
        except Exception:  # a bug: posted for rank 0, and its traceback stays with this rank
            traceback.print_exc()
