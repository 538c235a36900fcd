"""Failed and silent ranks: heartbeats in the store, and the error every rank stops with.

Each rank counts its heartbeats in the store (`beat/<rank>`) once a second.
Every wait on other ranks polls: it sees another rank's posted error within
about a second, and a rank that was killed, hung or lost its node once its
count has not moved for HTSR_DIST_TIMEOUT.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable

import torch.distributed as dist

from htsr_cli.errors import HtsrError

HEARTBEAT_S = 1.0
# A rank that has not sent its first heartbeat may still be importing torch on a
# busy node: it is given this long (or HTSR_DIST_TIMEOUT if longer) to start.
STARTUP_GRACE_S = 120.0
POLL_S = 0.05
# Exit codes a failure carries to rank 0: a user's mistake, anything else.
USAGE_ERROR, FAILURE, INTERRUPTED = 2, 1, 130


class RankFailed(HtsrError):
    """A rank failed: every rank stops with the first cause, and rank 0 prints it."""

    def __init__(self, rank: int, cause: str, exit_code: int) -> None:
        super().__init__(f"rank {rank}: {cause}")
        self.rank, self.cause, self.exit_code = rank, cause, exit_code


def send_heartbeats(store: dist.Store, rank: int, stopped: threading.Event) -> None:
    """Count this rank's heartbeats in the store every HEARTBEAT_S until `stopped` (a cluster's thread)."""
    while True:
        try:
            store.add(f"beat/{rank}", 1)
        except Exception:  # the store is gone: the waits of this rank notice it themselves
            return
        if stopped.wait(HEARTBEAT_S):
            return


class Liveness:
    """Notices a rank whose heartbeat stopped (killed, hung, its node gone) for longer than the timeout."""

    def __init__(self, store: dist.Store, timeout: float) -> None:
        self.store, self.timeout = store, timeout
        self.seen: dict[int, tuple[int, float]] = {}  # rank -> (heartbeat count, when it last changed)
        self.checked = -math.inf

    def check(self, ranks: Iterable[int]) -> None:
        """Raise RankFailed for a silent rank among `ranks` (looked at, lazily, once per heartbeat)."""
        now = time.monotonic()
        if now - self.checked < HEARTBEAT_S:
            return
        self.checked = now
        for rank in ranks:
            count = self.store.add(f"beat/{rank}", 0)
            limit = self.timeout if count else max(self.timeout, STARTUP_GRACE_S)
            if rank not in self.seen or self.seen[rank][0] != count:
                self.seen[rank] = (count, now)
            elif now - self.seen[rank][1] > limit:
                raise RankFailed(rank, f"stopped responding (no heartbeat for {limit:g} s)", FAILURE)


def first_line(error: BaseException) -> str:
    """An error as the one line a rank posts for rank 0 (the cause after `rank N: `)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
