"""Eigenvalues of W^T W: the only module that knows about devices and precision.

`SolverPrecision` decides, once per analysis, the dtypes of Grams and
eigensolves and whether fits are guarded; other modules ask it.

The spectrum of a rows x cols slice is computed from the Gram matrix of its
short side (W^T W when rows >= cols, else W W^T) with a batched symmetric
eigensolver. There is no 1/N normalisation.

Precision (`--precision`):

- `mixed` (default): the Gram is formed in float32 from bf16/fp16/fp8/fp32
  weights and handed to a float64 eigensolver. A product of two bf16, fp16 or
  fp8 values is exact in float32, so only the accumulation rounds; float64
  weights keep a float64 Gram.
- `float64`: everything in float64 (the reference path).
- `float32`: float32 Gram and float32 eigensolver. Its eigenvalues carry an
  absolute error of about 0.1 * n * eps32 * lambda_max, so every fit is
  checked (`fit.guarded_fit`) and redone from the same Gram in float64 when
  that error could move alpha by more than 1e-3.

On a CPU whose eigensolves run on one thread each, float64 Grams with a side
in NUMPY_EIGVALSH_SIDES are solved by numpy's LAPACK (the OpenBLAS its wheels
bundle; torch's CPU wheels use MKL), set to one thread for the rest of the
process (`_OneThreadBlas` says why). Measured on this project's 2-core AMD EPYC,
one solve per call on the 2-worker pool as FARMS and conv slices run them,
numpy over torch: n = 256 0.67x, 384 0.71x (slower: left to torch), 512 1.44x,
768 1.61x, 1024 1.61x, 2000 1.04x; n = 4096 on two threads 0.80x (3.6 against 2.9 s).
The two agree to 1e-16 of the Gram's trace. Which library solves a matrix
depends on its side and the thread setting only, never on what it is batched with.

Only the lower triangle of each Gram is formed (column blocks of
TRIANGLE_BLOCK), because `eigvalsh(UPLO="L")` reads nothing else. The numbers
of one matrix never depend on the others it is batched with: the long side is
cut into blocks by that matrix's shape alone, and on the CPU the eigensolver
always runs on `eigensolver_threads` threads, however many solves run at once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from htsr_cli.errors import InvalidSetting
from htsr_cli.settings import PRECISIONS, AnalyzeSettings

# Bytes of Gram matrices per batched eigvalsh call; bounds memory for large stacks.
GRAM_BUDGET_BYTES = 256 << 20
# Bytes of one upcast block of a matrix's long side while its Gram is accumulated.
UPCAST_BLOCK_BYTES = 64 << 20
# Columns per block of the lower-triangle Gram: each block is one matrix product
# of the columns from its first on, so about half the products of a full Gram are skipped.
TRIANGLE_BLOCK = 256
# Float64 Gram sides (inclusive) that numpy's LAPACK solves on a one-thread CPU eigensolver (see above).
NUMPY_EIGVALSH_SIDES = (512, 2048)


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


_COPY_STREAMS: dict[torch.device, "torch.cuda.Stream"] = {}
# Eigensolver pools by (workers, threads each), made on first use and shared by every
# solve of the process, so two concurrent FARMS layers never run more solves than cores.
_EIGENSOLVER_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_OUT_DTYPE_BMM: dict[torch.device, bool] = {}


class _OneThreadBlas:
    """Sets numpy's BLAS/LAPACK to one thread for the rest of the process, on the first numpy eigensolve.

    OpenBLAS's thread count is process-wide, and its eigenvalues change in the
    last bits with it. Setting it per solve and restoring it after is not enough:
    measured, solves on pool threads then differ (by ~1e-15 relative) from the
    same solves on the main thread, while with the count held fixed they are
    identical. So it is set once (threadpoolctl) and left at one thread: numpy's
    other BLAS calls in this process run on one thread too, on machines where
    htsr's eigensolves do (three cores or fewer). `available` is False when
    threadpoolctl finds no BLAS library under numpy; torch then solves everything.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._controller = None
        self._checked = False
        self._held = None

    @property
    def available(self) -> bool:
        with self._lock:
            if not self._checked:
                self._checked = True
                try:
                    from threadpoolctl import ThreadpoolController

                    controller = ThreadpoolController().select(user_api="blas")
                    self._controller = controller if controller.lib_controllers else None
                except ImportError:
                    self._controller = None
            return self._controller is not None

    def hold(self) -> None:
        """One BLAS thread from now on (idempotent)."""
        with self._lock:
            if self._held is None:
                self._held = self._controller.limit(limits=1)


_ONE_THREAD_BLAS = _OneThreadBlas()


def _copy_stream(device: torch.device) -> "torch.cuda.Stream":
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]


def _has_out_dtype_bmm(device: torch.device) -> bool:
    """Whether this torch multiplies bf16 matrices into a float32 result (`bmm(..., out_dtype=)`) on `device`."""
    if device not in _OUT_DTYPE_BMM:
        try:
            probe = torch.ones(1, 2, 2, dtype=torch.bfloat16, device=device)
            _OUT_DTYPE_BMM[device] = torch.bmm(probe, probe, out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_BMM[device] = False
    return _OUT_DTYPE_BMM[device]


def _eigensolver_pool(workers: int, threads: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        if (workers, threads) not in _EIGENSOLVER_POOLS:
            _EIGENSOLVER_POOLS[workers, threads] = ThreadPoolExecutor(
                workers, "htsr-eigvalsh", initializer=torch.set_num_threads, initargs=(threads,)
            )
        return _EIGENSOLVER_POOLS[workers, threads]


def resolve_device(name: str) -> torch.device:
    """cpu, or cuda with its index (tensors report `cuda:0`, never bare `cuda`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InvalidSetting("device", "cuda", "no CUDA device is available (use cpu or auto)")
    return torch.device("cuda", torch.cuda.current_device())


def _is_float8(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point and dtype.itemsize == 1


@dataclass(frozen=True)
class SolverPrecision:
    """The arithmetic of every solve, decided once: which dtype a Gram and an eigensolve use.

    `mode` is the precision the solves run in (one of `settings.PRECISIONS`),
    which is the requested `--precision` except where `for_settings` overrides it.
    Other modules ask this object; none compares precision names.
    """

    mode: str = "mixed"

    def __post_init__(self) -> None:
        if self.mode not in PRECISIONS:
            raise InvalidSetting("precision", self.mode, f"must be one of {', '.join(PRECISIONS)}")

    @classmethod
    def for_settings(cls, settings: AnalyzeSettings) -> "SolverPrecision":
        """`settings.precision`, except with xmin=peak, which always solves in float64.

        `peak` bins log10(eigenvalue) from the smallest eigenvalue to the largest,
        and a float32 Gram or eigensolver leaves the smallest ones off by about
        eps32 x lambda_max (several percent on trained layers): the bin edges
        move, the fullest bin changes and xmin jumps (MiniLM's pooler: alpha
        4.88 in mixed against 8.26 in float64). No per-layer guard bounds that,
        so peak-based results (AlphaPruning, AlphaLoRA, `htsr prune`) stay on
        the float64 reference path.
        """
        return cls("float64" if settings.xmin == "peak" else settings.precision)

    def gram_dtype(self, stored: torch.dtype, device: torch.device) -> torch.dtype:
        """The precision the Gram of weights stored as `stored` is formed in on `device`."""
        if self.mode == "float64" or (self.mode == "mixed" and stored == torch.float64):
            return torch.float64
        if device.type == "cuda" and stored == torch.float32 and torch.get_float32_matmul_precision() != "highest":
            # TF32 matmuls (enabled by the user) round each product to 10 mantissa
            # bits; a float64 Gram keeps float32 weights as accurate as this mode promises.
            return torch.float64
        return torch.float32

    @property
    def eigensolver_dtype(self) -> torch.dtype:
        return torch.float32 if self.mode == "float32" else torch.float64

    @property
    def guarded(self) -> bool:
        """Whether every fit is checked by `fit.guarded_fit` and redone in float64 when float32 is not accurate enough."""
        return self.eigensolver_dtype == torch.float32

    @property
    def eigensolver_precision(self) -> str:
        """The eigensolver's dtype as the report names it: "float32" or "float64"."""
        return dtype_name(self.eigensolver_dtype)

    @property
    def nominal_gram_precision(self) -> str:
        """The Gram dtype the report names when no layer was solved (so none says which it used)."""
        return "float64" if self.mode == "float64" else "float32"


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype as reports name it: torch.float32 -> "float32"."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Eigensolver:
    device: torch.device
    precision: SolverPrecision = SolverPrecision()
    # CPU threads of every eigvalsh call. Fixed (half the cores) so that a matrix
    # gets the same bits whether it is solved alone or beside another one.
    eigensolver_threads: int = 1
    # eigvalsh calls `eigenvalues_of_each` runs at once on the CPU (cores / eigensolver_threads).
    parallel_solves: int = 1

    @classmethod
    def create(cls, device: str = "auto", precision: SolverPrecision | str = "mixed") -> "Eigensolver":
        """A solver on `device` ("auto", "cpu", "cuda"), in `precision` (a `SolverPrecision` or a mode's name)."""
        if isinstance(precision, str):
            precision = SolverPrecision(precision)
        threads = max(1, torch.get_num_threads() // 2)
        return cls(resolve_device(device), precision, threads, max(1, torch.get_num_threads() // threads))

    def gram_dtype(self, stored: torch.dtype) -> torch.dtype:
        """The precision the Gram of weights stored as `stored` is formed in on this solver's device."""
        return self.precision.gram_dtype(stored, self.device)

    @property
    def eigensolver_dtype(self) -> torch.dtype:
        return self.precision.eigensolver_dtype

    def transfer(self, tensor: torch.Tensor) -> torch.Tensor:
        """Move a stored tensor to the solver's device, keeping its stored dtype.

        The loader thread calls this, so what waits in the prefetch queue is the
        narrow stored tensor (bf16 is a quarter of float64), and on CUDA the copy
        of the next matrix overlaps the current solve: it runs from pinned memory
        on a side stream. Upcasting happens on the device, block by block, in `gram`.
        """
        if self.device.type != "cuda" or tensor.device == self.device:
            return tensor.to(self.device)
        stream = _copy_stream(self.device)
        host = tensor if tensor.is_pinned() else tensor.pin_memory()
        with torch.cuda.stream(stream):
            moved = host.to(self.device, non_blocking=True)
        # The solve runs on the default stream: keep the allocator from reusing
        # this block for the next copy while that solve may still read it.
        moved.record_stream(torch.cuda.default_stream(self.device))
        stream.synchronize()  # blocks only the loader thread; `host` may be freed after
        return moved

    def synchronize(self) -> None:
        """Wait for queued device work (only for timing: results never need it)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def grams(self, runs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Lower triangles of short-side Gram matrices: runs of [n_i, rows, cols] -> [sum n_i, side, side].

        Every run has the same short side; above the diagonal the result holds
        zeros or partial sums (`eigvalsh(UPLO="L")` never reads them). Runs are
        stored tensors (any float dtype); each is upcast on the device block by
        block, so a 32000 x 2048 bf16 embedding never exists as a float32 copy.
        """
        runs = [self.transfer(run) for run in runs]
        runs = [run.mT if run.shape[1] < run.shape[2] else run for run in runs]
        side = runs[0].shape[2]
        dtype = self.gram_dtype(runs[0].dtype)
        out = torch.zeros(sum(run.shape[0] for run in runs), side, side, dtype=dtype, device=self.device)
        start = 0
        for run in runs:
            self._lower_gram_into(out[start : start + run.shape[0]], run)
            start += run.shape[0]
        return out

    def gram(self, slices: torch.Tensor) -> torch.Tensor:
        """[B, rows, cols] -> [B, side, side]: `grams` of one run."""
        return self.grams([slices])

    def column_gram(self, matrix: torch.Tensor) -> torch.Tensor:
        """[rows, cols] -> [cols, cols]: the lower triangle of matrix^T matrix, whichever side is shorter."""
        cols = matrix.shape[1]
        out = torch.zeros(1, cols, cols, dtype=self.gram_dtype(matrix.dtype), device=self.device)
        self._lower_gram_into(out, matrix[None])
        return out[0]

    def _lower_gram_into(self, out: torch.Tensor, slices: torch.Tensor) -> None:
        """Accumulate slices^T slices into the lower triangle of `out`: [n, long, side] -> [n, side, side]."""
        count, long_side, side = slices.shape
        blocks = [(lo, min(lo + TRIANGLE_BLOCK, side)) for lo in range(0, side, TRIANGLE_BLOCK)]
        if (
            out.dtype == torch.float32
            and slices.dtype in (torch.bfloat16, torch.float16)
            and self.device.type == "cuda"
            and _has_out_dtype_bmm(self.device)
        ):
            # The tensor cores multiply bf16/fp16 and accumulate in float32: no upcast copy at all.
            for lo, hi in blocks:
                out[:, lo:, lo:hi] = torch.bmm(slices[:, :, lo:].mT, slices[:, :, lo:hi], out_dtype=torch.float32)
            return
        itemsize = out.element_size()
        step = max(1, UPCAST_BLOCK_BYTES // (side * itemsize))  # rows of one matrix per upcast block
        together = max(1, UPCAST_BLOCK_BYTES // (min(step, long_side) * side * itemsize))
        for first in range(0, count, together):
            part, target = slices[first : first + together], out[first : first + together]
            for top in range(0, long_side, step):
                block = part[:, top : top + step].to(out.dtype)  # [n, step, side]
                for lo, hi in blocks:
                    target[:, lo:, lo:hi].baddbmm_(block[:, :, lo:].mT, block[:, :, lo:hi])

    @contextmanager
    def _eigensolver_threads(self) -> Iterator[None]:
        if self.device.type != "cpu" or torch.get_num_threads() == self.eigensolver_threads:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self.eigensolver_threads)  # this thread's OpenMP/MKL setting only
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def eigenvalues(self, grams: torch.Tensor, float64: bool = False) -> torch.Tensor:
        """[B, side, side] lower-triangle Grams -> [B, side] float64 eigenvalues, ascending, clamped at 0.

        In the solver's eigensolver precision, or in float64 when asked (the float32 guard's redo).
        """
        dtype = torch.float64 if float64 else self.eigensolver_dtype
        if self._numpy_solves(grams.shape[-1], dtype):
            _ONE_THREAD_BLAS.hold()
            values = torch.from_numpy(np.linalg.eigvalsh(grams.to(dtype).numpy(), UPLO="L"))
        else:
            with self._eigensolver_threads():
                values = torch.linalg.eigvalsh(grams.to(dtype), UPLO="L")
        return values.to(torch.float64).clamp_min_(0.0)

    def _numpy_solves(self, side: int, dtype: torch.dtype) -> bool:
        """Whether numpy's LAPACK solves float64 Grams of this side here (see the module's docstring)."""
        low, high = NUMPY_EIGVALSH_SIDES
        return (
            self.device.type == "cpu"
            and self.eigensolver_threads == 1
            and dtype == torch.float64
            and low <= side <= high
            and _ONE_THREAD_BLAS.available
        )

    def eigenvalues_of_each(self, batches: Iterable[torch.Tensor], float64: bool = False) -> list[torch.Tensor]:
        """`eigenvalues` of each Gram stack `batches` yields, in order.

        On a CPU with cores to spare (FARMS: hundreds of small window Grams, each
        solve on `eigensolver_threads` threads) up to `parallel_solves` stacks are
        solved at once on a shared pool while the next is formed here; at most that
        many wait, so memory stays a few stacks. Every eigvalsh call runs on the
        same number of threads as alone, so the numbers do not change.
        """
        if self.device.type != "cpu" or self.parallel_solves == 1:
            return [self.eigenvalues(grams, float64) for grams in batches]
        pool = _eigensolver_pool(self.parallel_solves, self.eigensolver_threads)
        pending: deque = deque()
        done: list[torch.Tensor] = []
        for grams in batches:
            if len(pending) >= self.parallel_solves:
                done.append(pending.popleft().result())
            pending.append(pool.submit(self.eigenvalues, grams, float64))
            grams = None  # the pool holds it until solved
        done.extend(future.result() for future in pending)
        return done

    @staticmethod
    def finite_grams(grams: torch.Tensor) -> torch.Tensor:
        """[B, side, side] -> [B] bool: True where the Gram holds no NaN or Inf."""
        return torch.isfinite(grams).flatten(1).all(1)

    def gram_eigenvalues(self, slices: torch.Tensor, float64: bool = False) -> torch.Tensor:
        """Eigenvalues of each slice's short-side Gram matrix.

        slices: [B, rows, cols], any float dtype -> [B, min(rows, cols)], ascending, clamped at 0.
        """
        batch, rows, cols = slices.shape
        side = min(rows, cols)
        chunk = max(1, GRAM_BUDGET_BYTES // (side * side * 8))
        parts = [self.eigenvalues(self.gram(slices[lo : lo + chunk]), float64) for lo in range(0, batch, chunk)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def pooled_eigenvalues(self, slices: torch.Tensor, scale: float = 1.0, float64: bool = False) -> torch.Tensor:
        """All slices' eigenvalues pooled into one sorted 1-D ESD (times `scale`)."""
        values = self.gram_eigenvalues(slices, float64).flatten()
        if scale != 1.0:
            values = values * scale
        return torch.sort(values).values

    def all_finite(self, slices: torch.Tensor) -> bool:
        """No NaN or Inf, checked in blocks of rows so no full-size temporary is made.

        float8 has no `isfinite`: each block is upcast to float32 (exactly) first.
        """
        rows = max(1, UPCAST_BLOCK_BYTES // (4 * max(1, slices.shape[-1])))
        upcast = _is_float8(slices.dtype)
        checks = [
            torch.isfinite(block.to(torch.float32) if upcast else block).all()
            for matrix in slices
            for block in matrix.split(rows)
        ]
        return bool(torch.stack(checks).all())  # one sync

    def work_bytes(self, count: int, rows: int, cols: int, stored: torch.dtype, farms: bool) -> int:
        """Bytes solving `count` rows x cols matrices stored as `stored` allocates at its peak."""
        side, long_side = min(rows, cols), max(rows, cols)
        gram = _bytes(self.gram_dtype(stored))
        return (
            count * rows * cols * _bytes(stored)  # the matrices as read
            + count * side * side * (gram + 16)  # Grams, their float64 copy, the eigensolver's own copy
            + min(count * long_side * side * gram, UPCAST_BLOCK_BYTES)  # one upcast block
            + (GRAM_BUDGET_BYTES if farms else 0)  # FARMS window Grams
        )
