"""One analysis, several processes: torch.distributed under torchrun.

    torchrun --nproc-per-node 8 -m htsr_cli analyze ./llama-70b -f json -o report.json

torchrun starts one process (rank) per slot and tells each who it is through
RANK, WORLD_SIZE and LOCAL_RANK. `analyze()` then becomes collective: every rank
plans the same matrices, takes its share (partitioned by estimated flops,
longest first, so the ranks finish together), solves it on cuda:LOCAL_RANK (or
the CPU), and rank 0 gathers the results into the one report.

Two channels connect the ranks:

- the rendezvous store (torchrun's TCPStore) carries the small messages that
  must never block: the first error of any rank, the layer count behind rank
  0's progress bar, heartbeats, barriers, and the command line's jobs. Every
  wait on it polls, so a rank that failed or went silent is noticed within
  about a second (or after HTSR_DIST_TIMEOUT of silence).
- the process group (gloo on the CPU; `cpu:gloo,cuda:nccl` when the solver is
  on CUDA) carries the results: per-layer results as objects, spectra as
  float64 tensors in bounded chunks. A collective starts only after a store
  barrier has seen every rank arrive, so it is short and bounded by the
  group's timeout (HTSR_DIST_TIMEOUT).
"""

from __future__ import annotations

import atexit
import dataclasses
import heapq
import json
import math
import os
import threading
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from os import PathLike
from typing import Any

import torch
import torch.distributed as dist

from htsr_cli.errors import HtsrError
from htsr_cli.spectra.farms import CONV_KINDS, conv_divisions, window_grid
from htsr_cli.spectra.matrices import MatrixSpec
from htsr_cli.settings import AnalyzeSettings, FarmsSettings

TIMEOUT_ENV = "HTSR_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
HEARTBEAT_S = 1.0
# A rank that has not sent its first heartbeat may still be importing torch on a
# busy node: it is given this long (or HTSR_DIST_TIMEOUT if longer) to start.
STARTUP_GRACE_S = 120.0
POLL_S = 0.05
# How often a rank adds its finished layers to the shared count and looks for
# another rank's error: a store round trip per layer would cost more than a
# small layer's solve.
FLUSH_S = 0.2
# float64 elements per spectra message (64 MB): far below gloo's and NCCL's
# message limits, and a bounded extra buffer on the sender.
CHUNK_ELEMENTS = 1 << 23
# Exit codes a failure carries to rank 0: a user's mistake, anything else.
USAGE_ERROR, FAILURE, INTERRUPTED = 2, 1, 130

ProgressCallback = Callable[[int, int, str], None]


class RankFailed(HtsrError):
    """A rank failed: every rank stops with the first cause, and rank 0 prints it."""

    def __init__(self, rank: int, cause: str, exit_code: int) -> None:
        super().__init__(f"rank {rank}: {cause}")
        self.rank, self.cause, self.exit_code = rank, cause, exit_code


@dataclass(frozen=True)
class Launch:
    """Who this process is among the ranks that torchrun started."""

    rank: int
    world_size: int
    local_rank: int
    timeout: float  # seconds a rank waits for a silent peer, or for one collective

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Launch | None:
        """The launch torchrun describes in the environment; None without one or with a single rank."""
        if "WORLD_SIZE" not in environ:
            return None

        def number(name: str) -> int:
            try:
                return int(environ[name])
            except (KeyError, ValueError):
                raise HtsrError(
                    f"{name}={environ.get(name)!r}: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK to integers; "
                    "start htsr with torchrun or unset WORLD_SIZE"
                ) from None

        world_size = number("WORLD_SIZE")
        if world_size <= 1:
            return None
        rank, local_rank = number("RANK"), number("LOCAL_RANK")
        if not 0 <= rank < world_size or local_rank < 0:
            raise HtsrError(f"RANK={rank}, LOCAL_RANK={local_rank}: out of range for WORLD_SIZE={world_size}")
        text = environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
        try:
            timeout = float(text)
        except ValueError:
            timeout = math.nan
        if not timeout > 0:
            raise HtsrError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
        return cls(rank, world_size, local_rank, timeout)


# --- what each rank does: cost model and partition ------------------------------------


def _solve_flops(batch: int, rows: int, cols: int) -> float:
    """Gram (2 long short^2) plus the eigensolver's reduction to tridiagonal form (4/3 short^3), per matrix."""
    short, long = min(rows, cols), max(rows, cols)
    return batch * (2.0 * long * short * short + 4.0 / 3.0 * short**3)


def estimated_flops(spec: MatrixSpec, farms: FarmsSettings | None = None) -> float:
    """What solving one spec costs, from its shape alone: its slices, and its FARMS windows when asked."""
    if spec.skip_reason is not None:
        return 0.0  # never read
    rows, cols = spec.shape[0], spec.shape[1]
    batch = math.prod(spec.shape[2:])
    flops = _solve_flops(batch, rows, cols)
    if farms is None:
        return flops
    if spec.kind in CONV_KINDS:
        blocks = conv_divisions(rows, cols, farms.q)
        return flops + _solve_flops(batch * blocks.count, blocks.height, blocks.width)
    grid = window_grid(rows, cols, farms)
    return flops + _solve_flops(grid.count, grid.height, grid.width)


def partition(costs: list[float], ranks: int) -> list[list[int]]:
    """Indices of `costs` per rank, longest-processing-time first.

    The costliest remaining item goes to the least-loaded rank (the lowest rank
    on ties), so every rank computes the same partition. Each rank's indices
    ascend: a rank reads its tensors in storage order, each shard once.
    """
    loads = [(0.0, rank) for rank in range(ranks)]
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(loads)
        shares[rank].append(index)
        heapq.heappush(loads, (load + costs[index], rank))
    return [sorted(share) for share in shares]


# --- the command line's jobs: what rank 0 asks the other ranks to analyse ---------------


def analysis_job(source: str | PathLike, settings: AnalyzeSettings, keep_spectra: bool, profile: bool) -> dict:
    return {
        "source": os.fspath(source),
        "settings": dataclasses.asdict(settings),
        "keep_spectra": keep_spectra,
        "profile": profile,
    }


def settings_from_json(data: dict[str, Any]) -> AnalyzeSettings:
    """`dataclasses.asdict(settings)` back into settings, nested settings (FARMS) included."""
    hints = typing.get_type_hints(AnalyzeSettings)
    values = {}
    for name, value in data.items():
        nested = [kind for kind in typing.get_args(hints[name]) if dataclasses.is_dataclass(kind)]
        values[name] = nested[0](**value) if nested and isinstance(value, dict) else value
    return AnalyzeSettings(**values)


# --- the ranks ------------------------------------------------------------------------


class Cluster:
    """This process's place among the ranks: the store, the process group, the analyses so far."""

    def __init__(self, launch: Launch, store: dist.Store, *, leading: bool, own_group: bool) -> None:
        self.launch = launch
        self.rank, self.size, self.timeout = launch.rank, launch.world_size, launch.timeout
        self.store = dist.PrefixStore("htsr/", store)
        self.leading = leading  # rank 0 of the command line: it tells the others what to analyse
        self.analyses = 0
        self.group: dist.ProcessGroup | None = None  # None: the default group, once initialised
        self._own_group = own_group  # whether htsr (not the caller) creates the default group
        self.grouped = False
        self._stopped = threading.Event()
        threading.Thread(target=self._beat, name="htsr-heartbeat", daemon=True).start()

    @classmethod
    def connect(cls, launch: Launch, *, leading: bool = False) -> Cluster:
        """Join the store torchrun runs (MASTER_ADDR:MASTER_PORT), or the caller's existing process group."""
        if dist.is_initialized():
            # A script that set up torch.distributed itself (e.g. DDP training
            # calling TempBalance): use its store rather than open a second one.
            return cls(launch, dist.distributed_c10d._get_default_store(), leading=leading, own_group=False)
        timeout = timedelta(seconds=launch.timeout)
        try:
            store, _, _ = next(dist.rendezvous("env://", launch.rank, launch.world_size, timeout=timeout))
        except (ValueError, RuntimeError) as error:  # DistStoreError is a RuntimeError
            endpoint = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            raise HtsrError(f"cannot reach the torchrun rendezvous store at {endpoint} ({_first_line(error)})") from error
        return cls(launch, store, leading=leading, own_group=True)

    def _beat(self) -> None:
        while True:
            try:
                self.store.add(f"beat/{self.rank}", 1)
            except Exception:  # the store is gone: the waits of this rank notice it themselves
                return
            if self._stopped.wait(HEARTBEAT_S):
                return

    def use_device(self, device: str) -> None:
        """Make cuda:LOCAL_RANK the current device when the analysis may run on CUDA.

        With more ranks on a node than GPUs, ranks share them round-robin.
        """
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.set_device(self.launch.local_rank % torch.cuda.device_count())

    def ensure_group(self, device: torch.device) -> None:
        """The process group, created at the first analysis once the solver's device is known.

        On CUDA the group is `cpu:gloo,cuda:nccl`: CUDA tensors would travel over
        NCCL, and the results htsr exchanges (host objects and spectra) over gloo.
        NCCL builds its communicator only on a first CUDA collective, so ranks
        sharing one GPU work too.
        """
        if self.grouped:
            return
        timeout = timedelta(seconds=self.timeout)
        if self._own_group:
            backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
            dist.init_process_group(
                backend,
                store=dist.PrefixStore("group/", self.store),
                rank=self.rank,
                world_size=self.size,
                timeout=timeout,
            )
            atexit.register(self.close)
        else:
            self.group = dist.new_group(backend="gloo", timeout=timeout)  # host traffic beside the caller's group
        self.grouped = True

    def begin(self, source: Any, settings: AnalyzeSettings, keep_spectra: bool, profile: bool) -> Run:
        """Start the next collective analysis; rank 0 of the command line first tells the other ranks what it is."""
        index = self.analyses
        self.analyses += 1
        if self.leading:
            self.store.set(f"job/{index}", json.dumps(analysis_job(source, settings, keep_spectra, profile)))
        return Run(self, f"run/{index}/")

    def next_job(self) -> dict[str, Any]:
        """What rank 0 asks for next: an analysis, or {"exit_code": N} when its command is over."""
        key = f"job/{self.analyses}"
        watch = Liveness(self)
        try:
            while not self.store.check([key]):
                watch.check([0])
                time.sleep(POLL_S)
            return json.loads(self.store.get(key))
        except dist.DistError as error:  # the store went away with rank 0 (launched without torchrun's agent)
            raise RankFailed(0, f"lost contact ({_first_line(error)})", FAILURE) from error

    def release(self, exit_code: int) -> None:
        """Rank 0 of the command line: the command is over; the other ranks exit with its code.

        torchrun's agent keeps the store alive after this rank exits. Launched
        without it, rank 0 hosts the store, so it waits (bounded) for the other
        ranks to read the code before it goes.
        """
        try:
            self.store.set(f"job/{self.analyses}", json.dumps({"exit_code": exit_code}))
            hosts_store = self._own_group and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            deadline = time.monotonic() + (self.timeout if hosts_store else 0.0)
            while self.store.add("released", 0) < self.size - 1 and time.monotonic() < deadline:
                time.sleep(POLL_S)
        except Exception:  # the store is gone: torchrun is already tearing the ranks down
            pass
        self.close()

    def leave(self) -> None:
        """A rank other than 0: it read rank 0's exit code and goes."""
        try:
            self.store.add("released", 1)
        except Exception:
            pass
        self.close()

    def close(self) -> None:
        self._stopped.set()
        if self._own_group and self.grouped and dist.is_initialized():
            dist.destroy_process_group()
            self.grouped = False


class Liveness:
    """Notices a rank whose heartbeat stopped (killed, hung, its node gone) for longer than the timeout."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.seen: dict[int, tuple[int, float]] = {}  # rank -> (heartbeat count, when it last changed)
        self.checked = -math.inf

    def check(self, ranks: Iterable[int]) -> None:
        """Raise RankFailed for a silent rank among `ranks` (looked at, lazily, once per heartbeat)."""
        now = time.monotonic()
        if now - self.checked < HEARTBEAT_S:
            return
        self.checked = now
        for rank in ranks:
            count = self.cluster.store.add(f"beat/{rank}", 0)
            limit = self.cluster.timeout if count else max(self.cluster.timeout, STARTUP_GRACE_S)
            if rank not in self.seen or self.seen[rank][0] != count:
                self.seen[rank] = (count, now)
            elif now - self.seen[rank][1] > limit:
                raise RankFailed(rank, f"stopped responding (no heartbeat for {limit:g} s)", FAILURE)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


_CLUSTER: Cluster | None = None


def current() -> Cluster | None:
    """This process's cluster under torchrun (joined on first use); None for a single process."""
    global _CLUSTER
    if _CLUSTER is None:
        launch = Launch.from_env()
        if launch is None:
            return None
        _CLUSTER = Cluster.connect(launch)
    return _CLUSTER


def join(launch: Launch, *, leading: bool) -> Cluster:
    """The command line's start under torchrun: rank 0 leads, the other ranks serve its analyses."""
    global _CLUSTER
    _CLUSTER = Cluster.connect(launch, leading=leading)
    return _CLUSTER


class Run:
    """One collective analysis: the share of each rank, barriers, the shared error, the gathers."""

    def __init__(self, cluster: Cluster, prefix: str) -> None:
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
            self._post(_first_line(error), code)
            raise RankFailed(self.rank, _first_line(error), code) from error
        except KeyboardInterrupt:
            self._post("interrupted", INTERRUPTED)
            raise
        except dist.DistError as error:  # the store or a peer went away: not a bug of this rank
            cause = f"lost contact with the other ranks ({_first_line(error)})"
            raise (self._post(cause, FAILURE) or RankFailed(self.rank, cause, FAILURE)) from error
        except Exception as error:
            first = self._post(f"{type(error).__name__}: {_first_line(error)}", FAILURE)
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
        watch = Liveness(self.cluster)
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
