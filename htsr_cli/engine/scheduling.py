"""Which matrices are solved together, and how many solves run at once.

- `batch_order`: the order matrices are read and solved in. Storage order (the
  cheapest to read), except that inside one block (a decoder layer) matrices of
  one shape are brought together, so 64 experts or equal-shape q/k/v projections
  go through one batched Gram and one batched `eigvalsh` call.
- `Batch`: consecutive matrices of one Gram shape and dtype, at most
  MAX_BATCH_SLICES and a memory cap of Grams.
- `prefetched`: runs a producer (reading, moving to the device, batching) on a
  loader thread, a few items ahead of the consumer.
- `run_batches`: at most `slots` batches in flight; the next batch starts as soon
  as any running one finishes (not first-in-first-out), and only while the
  memory of the batches in flight stays within the budget.
- `estimated_flops` and `partition`: what solving a matrix costs, from its
  shape alone, and the shares of the ranks under torchrun cut by that cost
  (longest first, so the ranks finish together; see engine/distributed/).

A matrix's numbers never depend on its batch or on what runs beside it (see
solver.py), so none of this changes a result.
"""

from __future__ import annotations

import heapq
import math
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from htsr_cli.settings import FarmsSettings
from htsr_cli.spectra.farms import conv_divisions, window_grid
from htsr_cli.spectra.matrices import CONV_KINDS, MatrixSpec

MAX_BATCH_SLICES = 256  # matrices per batched solve, whatever their size
PREFETCH = 2  # items the loader thread may run ahead

Item = TypeVar("Item")
Result = TypeVar("Result")


def gram_shape(spec: MatrixSpec) -> tuple[int, int]:
    """(long side, short side) of the spec's matrices: what its Gram computation looks like."""
    _, rows, cols = spec.slice_grid
    return max(rows, cols), min(rows, cols)


def batch_order(specs: list[MatrixSpec]) -> list[int]:
    """Positions of `specs` in solving order.

    Consecutive specs of one block keep their order, except that those of one
    Gram shape and dtype move together, in the order the shapes first appear;
    specs outside numbered blocks stay where they are. A fused tensor's
    matrices, all of one shape, stay consecutive, so it is read once.
    """
    order: list[int] = []
    start = 0
    while start < len(specs):
        end = start + 1
        block = specs[start].block
        while block is not None and end < len(specs) and specs[end].block == block:
            end += 1
        first_seen: dict[tuple, int] = {}
        for index in range(start, end):
            first_seen.setdefault((gram_shape(specs[index]), specs[index].dtype), index)
        order += sorted(range(start, end), key=lambda i: first_seen[(gram_shape(specs[i]), specs[i].dtype)])
        start = end
    return order


@dataclass
class Batch:
    """Matrices solved by one batched Gram + eigensolver call: one entry per layer."""

    indices: list[int] = field(default_factory=list)  # positions in the caller's spec list
    specs: list[MatrixSpec] = field(default_factory=list)
    stacks: list[torch.Tensor] = field(default_factory=list)  # per layer [n, rows, cols], stored dtype
    work: int = 0  # bytes the batch allocates at its peak
    gram_bytes: int = 0
    slices: int = 0

    def fits(self, stack: torch.Tensor, gram_bytes: int, cap_bytes: int) -> bool:
        """Whether a layer whose matrices are `stack` can join this batch."""
        if not self.stacks:
            return True
        first = self.stacks[0]
        return (
            stack.dtype == first.dtype
            and sorted(stack.shape[1:]) == sorted(first.shape[1:])
            and self.slices + stack.shape[0] <= MAX_BATCH_SLICES
            and self.gram_bytes + gram_bytes <= cap_bytes
        )

    def add(self, index: int, spec: MatrixSpec, stack: torch.Tensor, work: int, gram_bytes: int) -> None:
        self.indices.append(index)
        self.specs.append(spec)
        self.stacks.append(stack)
        self.work += work
        self.gram_bytes += gram_bytes
        self.slices += stack.shape[0]


def prefetched(produce: Callable[[], Iterator[Item]], depth: int = PREFETCH) -> Iterator[Item]:
    """The items of `produce()`, made on a loader thread at most `depth` ahead.

    An error in the producer is raised here, in the consumer; closing this
    generator stops the producer.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def run() -> None:
        try:
            for item in produce():
                if stop.is_set():
                    return
                slots.put((item, None))
                item = None  # do not pin it while making the next
            slots.put((done, None))
        except BaseException as error:  # handed to the consumer, which re-raises it
            slots.put((None, error))

    loader = threading.Thread(target=run, name="htsr-loader", daemon=True)
    loader.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
            item = None  # the consumer is done with it: do not pin it while fetching the next
    finally:
        stop.set()
        while loader.is_alive():  # unblock a loader waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                loader.join(timeout=0.05)


def _take_and_solve(solve: Callable[[Batch], Result], handed: list[Batch]) -> Result:
    return solve(handed.pop())


@contextmanager
def worker_pool(workers: int, name: str, initializer: Callable | None = None, initargs: tuple = ()) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that waits for its work on a normal exit, but not after an error or a stop signal.

    On Ctrl-C or SIGTERM a solve in flight may have minutes to go: the pool is
    shut down without waiting (queued work cancelled), so the run ends at once;
    the running solve's thread finishes in the background or dies with the process.
    """
    pool = ThreadPoolExecutor(workers, name, initializer=initializer, initargs=initargs)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def run_batches(
    batches: Iterator[Batch],
    solve: Callable[[Batch], Result],
    collect: Callable[[Result], None],
    *,
    slots: int,
    threads: int,
    budget: int,
    started: Callable[[Batch], None] | None = None,
) -> None:
    """Solve every batch on `slots` worker threads of `threads` torch threads each.

    A batch starts when a worker is free and the work of the batches in flight
    plus its own fits in `budget` (one batch always may run). `collect` gets
    each result on this thread, in the order the solves finish.
    """
    in_flight: dict[Future, int] = {}

    def collect_finished() -> None:
        finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        for future in finished:
            del in_flight[future]
            collect(future.result())

    with worker_pool(slots, "htsr-solve", torch.set_num_threads, (threads,)) as pool:
        try:
            while True:
                batch = next(batches, None)
                if batch is None:
                    break
                while in_flight and (len(in_flight) >= slots or sum(in_flight.values()) + batch.work > budget):
                    collect_finished()
                if started is not None:
                    started(batch)
                # Handed over in a list the worker empties: a batch is freed when its solve
                # returns, not later when the pool drops its work item.
                in_flight[pool.submit(_take_and_solve, solve, [batch])] = batch.work
                batch = None
            while in_flight:
                collect_finished()
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise


# --- the cost model: what a matrix costs, and each rank's share under torchrun ----------


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
