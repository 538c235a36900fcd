"""One collective analysis: each rank's share, store barriers, the shared error, the gathers.

Every rank calls the same methods in the same order. Waits go through the
store and poll (see liveness.py); results travel over the process group, a
collective starting only once a store barrier has seen every rank arrive.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Protocol

import torch
import torch.distributed as dist

from htsr_cli.engine.distributed.liveness import (
    FAILURE,
    INTERRUPTED,
    POLL_S,
    USAGE_ERROR,
    Liveness,
    RankFailed,
    first_line,
)
from htsr_cli.engine.scheduling import partition
from htsr_cli.errors import HtsrError
from htsr_cli.settings import ProgressCallback


class Members(Protocol):
    """What a run needs of its cluster.

    cluster.Cluster creates the runs; naming it here through a Protocol
    rather than an import keeps the two modules out of an import cycle.
    """

    rank: int
    size: int
    timeout: float
    store: dist.Store
    group: dist.ProcessGroup | None
    grouped: bool

    def ensure_group(self, device: torch.device) -> None: ...


# How often a rank adds its finished layers to the shared count and looks for
# another rank's error: a store round trip per layer would cost more than a
# small layer's solve.
FLUSH_S = 0.2
# float64 elements per spectra message (64 MB): far below gloo's and NCCL's
# message limits, and a bounded extra buffer on the sender.
CHUNK_ELEMENTS = 1 << 23


class Run:
    """One collective analysis: the share of each rank, barriers, the shared error, the gathers."""

    def __init__(self, cluster: Members, prefix: str) -> None:
        self.cluster = cluster
        self.rank, self.size = cluster.rank, cluster.size
        self.is_root = self.rank == 0
        self.store = dist.PrefixStore(prefix, cluster.store)

    # Errors: the first one posted wins, and every rank stops with it.

    @contextmanager
    def failures_shared(self) -> Iterator[None]:
        """Post any error for the other ranks; raise RankFailed when another rank failed first."""
        try:
            yield
        except RankFailed:
            raise
        except (HtsrError, torch.OutOfMemoryError) as error:  # running out of memory is no bug: one line too
            code = USAGE_ERROR if isinstance(error, HtsrError) else FAILURE
            self._post(first_line(error), code)
            raise RankFailed(self.rank, first_line(error), code) from error
        except KeyboardInterrupt:
            self._post("interrupted", INTERRUPTED)
            raise
        except dist.DistError as error:  # the store or a peer went away: not a bug of this rank
            cause = f"lost contact with the other ranks ({first_line(error)})"
            raise (self._post(cause, FAILURE) or RankFailed(self.rank, cause, FAILURE)) from error
        except Exception as error:
            first = self._post(f"{type(error).__name__}: {first_line(error)}", FAILURE)
            if first is not None and first.rank != self.rank:
                raise first from error  # this error followed another rank's failure (a broken collective)
            raise  # a bug keeps its traceback on the rank that hit it

    def _post(self, cause: str, exit_code: int) -> RankFailed | None:
        """Offer this rank's error; returns the first error posted (maybe another rank's)."""
        payload = json.dumps({"rank": self.rank, "cause": cause, "exit_code": exit_code})
        try:
            return _rank_failed(self.store.compare_set("error", "", payload))
        except Exception:  # the store is gone too: nobody can be told
            return None

    def raise_posted(self) -> None:
        if self.store.check(["error"]):
            raise _rank_failed(self.store.get("error"))

    # Sharing the work.

    def share(self, costs: list[float]) -> list[int]:
        return partition(costs, self.size)[self.rank]

    def progress(self, report: ProgressCallback | None, total: int) -> ProgressCallback:
        """The progress callback for this rank's share.

        It adds the share's finished layers to a count in the store (rank 0's bar
        shows the count of all ranks out of `total`) and stops the share as soon
        as another rank has failed, both at most every FLUSH_S.
        """
        reported, flushed = 0, -math.inf

        def update(done: int, share_total: int, layer: str) -> None:
            nonlocal reported, flushed
            now = time.monotonic()
            if now - flushed < FLUSH_S and done < share_total:
                return
            count = self.store.add("layers", done - reported)
            reported, flushed = done, now
            self.raise_posted()
            if report is not None:
                report(count, total, layer)

        return update

    def wait_for_all(self, step: str, report: ProgressCallback | None = None, total: int = 0) -> None:
        """A barrier on the store: returns once every rank reached `step`.

        Raises as soon as a rank has failed or stopped beating, and keeps rank 0's
        progress bar moving while the other ranks finish.
        """
        self.store.set(f"{step}/{self.rank}", "1")
        arrived = self.store.add(step, 1)
        watch = Liveness(self.cluster.store, self.cluster.timeout)
        while True:
            self.raise_posted()
            if report is not None:
                report(self.store.add("layers", 0), total, "")
            if arrived >= self.size:
                return
            watch.check(rank for rank in range(self.size) if not self.store.check([f"{step}/{rank}"]))
            time.sleep(POLL_S)
            arrived = self.store.add(step, 0)

    def ensure_group(self, device: torch.device) -> None:
        """The process group, at the first analysis, once every rank is there to create it."""
        if not self.cluster.grouped:
            self.wait_for_all("group")
            self.cluster.ensure_group(device)

    # Moving results to rank 0 (collectives: every rank calls them, in the same order).

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0, in rank order; None elsewhere."""
        gathered = [None] * self.size if self.is_root else None
        dist.gather_object(obj, gathered, dst=0, group=self.cluster.group)
        return gathered

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.cluster.group)
        return box[0]

    def gather_tensors(self, tensors: list[torch.Tensor]) -> list[list[torch.Tensor]] | None:
        """Every rank's 1-D CPU float tensors on rank 0 (per rank, in order); None elsewhere.

        They travel as float64 in chunks of at most CHUNK_ELEMENTS, round by
        round, so no message is larger than 64 MB however large the spectra
        (FARMS pools of a big model add up to gigabytes).
        """
        layouts = self.gather([(tensor.numel(), str(tensor.dtype)) for tensor in tensors])
        timeout = timedelta(seconds=self.cluster.timeout)
        group = self.cluster.group
        if not self.is_root:
            for chunk in _chunks(tensors, CHUNK_ELEMENTS):
                dist.isend(chunk, dst=0, group=group).wait(timeout)
            return None
        received = [torch.empty(sum(n for n, _ in layout), dtype=torch.float64) for layout in layouts]
        rounds = max(math.ceil(buffer.numel() / CHUNK_ELEMENTS) for buffer in received[1:])
        for round_index in range(rounds):
            lo = round_index * CHUNK_ELEMENTS
            pending = [
                dist.irecv(received[rank][lo : lo + CHUNK_ELEMENTS], src=rank, group=group)
                for rank in range(1, self.size)
                if received[rank].numel() > lo
            ]
            for work in pending:
                work.wait(timeout)
        gathered = [list(tensors)]
        for rank in range(1, self.size):
            sizes = [n for n, _ in layouts[rank]]
            parts = received[rank].split(sizes) if sizes else ()
            dtypes = [getattr(torch, name.removeprefix("torch.")) for _, name in layouts[rank]]
            gathered.append([part.to(dtype) for part, dtype in zip(parts, dtypes)])
        return gathered


def _rank_failed(payload: bytes | str) -> RankFailed:
    data = json.loads(payload)
    return RankFailed(int(data["rank"]), str(data["cause"]), int(data["exit_code"]))


def _chunks(tensors: list[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """The tensors' elements in order as float64 pieces of `size` elements (the last may be shorter)."""
    pending: list[torch.Tensor] = []
    filled = 0
    for tensor in tensors:
        flat = tensor.reshape(-1)
        start = 0
        while start < flat.numel():
            take = min(size - filled, flat.numel() - start)
            pending.append(flat[start : start + take].to(torch.float64))
            filled += take
            start += take
            if filled == size:
                yield torch.cat(pending)
                pending, filled = [], 0
    if pending:
        yield torch.cat(pending)
