"""This process among the ranks: the store, the process group, and rank 0's jobs.

A `Cluster` joins torchrun's rendezvous store (or the store of a process group
the caller created), beats its heartbeat there, creates the process group at
the first analysis once the solver's device is known, and destroys it at the
end. Under the command line, rank 0 leads: it posts each analysis as a job for
the other ranks, and at the end its exit code.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from htsr_cli.engine.distributed.collective import Run
from htsr_cli.engine.distributed.jobs import analysis_job
from htsr_cli.engine.distributed.launch import Launch
from htsr_cli.engine.distributed.liveness import FAILURE, POLL_S, Liveness, RankFailed, first_line, send_heartbeats
from htsr_cli.errors import HtsrError
from htsr_cli.settings import AnalyzeSettings


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
        threading.Thread(
            target=send_heartbeats, args=(self.store, self.rank, self._stopped), name="htsr-heartbeat", daemon=True
        ).start()

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
            raise HtsrError(f"cannot reach the torchrun rendezvous store at {endpoint} ({first_line(error)})") from error
        return cls(launch, store, leading=leading, own_group=True)

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
        watch = Liveness(self.store, self.timeout)
        try:
            while not self.store.check([key]):
                watch.check([0])
                time.sleep(POLL_S)
            return json.loads(self.store.get(key))
        except dist.DistError as error:  # the store went away with rank 0 (launched without torchrun's agent)
            raise RankFailed(0, f"lost contact ({first_line(error)})", FAILURE) from error

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


# The one process-wide value of the package, kept on purpose: a process is one
# rank, with one store connection, one heartbeat and one default process group
# (torch.distributed's is itself process-wide), and its analyses are numbered in
# one sequence (job/N, run/N) that every rank must follow. `analyze()` is a
# public call that a script makes alike on every rank, with no cluster argument,
# so it finds the cluster here; the command line joins it first (rank 0 leading).
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
