"""The analysis pipeline: checkpoint -> matrices -> spectra -> fits -> Report.

Tensors stream through: a loader thread reads the next tensors (and moves
them to the solver's device) while the current ones are solved, a few batches
ahead at most, so IO hides behind compute and peak memory is a few matrices
whatever the model size. Matrices of one shape are solved in one batched call
(scheduling.py); on a CPU with 2+ cores two batches are solved at once, one
per thread set, and on CUDA the fits run on a CPU thread pool beside the GPU
solves. None of this changes a number: results are those of solving each
matrix alone, in spec order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from contextlib import closing, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from os import PathLike

import numpy as np
import torch

from htsr_cli import __version__
from htsr_cli.engine import distributed
from htsr_cli.checkpoints import Checkpoint, open_checkpoint
from htsr_cli.checkpoints.sources import MergedAdapter
from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.spectra.farms import FarmsResult, farms_fit
from htsr_cli.spectra.fit import fit_failure_reason, guarded_fit
from htsr_cli.spectra.tpl import fit_truncated_power_law
from htsr_cli.spectra.matrices import CONV_KINDS, MatrixSpec, as_slices, matrix_specs, merge_runs
from htsr_cli.spectra.memory import available_bytes, format_bytes
from htsr_cli.spectra.metrics import spectral_metrics
from htsr_cli.spectra.random_matrix import layer_metrics, replicas_for, shuffled_slices
from htsr_cli.results.report import (
    FAILED,
    FIT_FAILED,
    SKIPPED,
    LayerResult,
    LayerSpectra,
    Report,
    RunRecord,
    StageTimes,
    quality_of,
    report_settings,
    summarize,
)
from htsr_cli.engine.scheduling import Batch, batch_order, estimated_flops, prefetched, run_batches, worker_pool
from htsr_cli.settings import AnalyzeSettings, FarmsSettings, ProgressCallback
from htsr_cli.spectra.solver import GRAM_BUDGET_BYTES, Eigensolver, SolverPrecision, dtype_name

FIT_THREADS = 8  # CPU threads fitting beside a GPU's solves, at most
FIT_BACKLOG = 4  # per fit thread: fits waiting before the GPU solves wait for them

Source = str | PathLike | torch.nn.Module | Mapping[str, torch.Tensor] | MergedAdapter | Checkpoint


def select_layers(specs: list[MatrixSpec], pattern: str | None) -> list[MatrixSpec]:
    """Keep the matrices whose module name or tensor key matches the regex."""
    if pattern is None:
        return specs
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise InvalidSetting("layers", pattern, f"invalid regular expression ({error})") from None
    chosen = [spec for spec in specs if regex.search(spec.name) or regex.search(spec.tensor)]
    if not chosen:
        raise InvalidSetting(
            "layers", pattern, f"matches none of the {len(specs)} weight matrices (e.g. {specs[0].name!r})"
        )
    return chosen


def _layer_result(spec: MatrixSpec) -> LayerResult:
    return LayerResult(
        name=spec.name,
        tensor=spec.tensor,
        kind=spec.kind,
        shape=list(spec.shape),
        block=spec.block,
        params=spec.params,
        storage=spec.storage,
    )


class _StageClock:
    """Adds the time since the last lap to a stage of `StageTimes`; a no-op without one."""

    def __init__(self, solver: Eigensolver, times: StageTimes | None):
        self.solver, self.times = solver, times
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.times is None:
            return
        self.solver.synchronize()
        now = time.perf_counter()
        self.times.add(stage, now - self.last)
        self.last = now

    def restart(self) -> None:
        self.last = time.perf_counter()


@dataclass
class SolvedLayers:
    """What solving a list of specs yields: one result per spec, in the specs' order."""

    layers: list[LayerResult]
    spectra: dict[str, LayerSpectra]  # name -> spectra, only with keep_spectra
    candidates: set[str]  # xmin candidate sets the fits used: "exact" / "grid"
    gram_precisions: set[str] = field(default_factory=set)  # Gram dtypes used: "float32" / "float64"


@dataclass
class _Outcome:
    """One layer, solved: its result, spectra and what the report's settings say about it."""

    result: LayerResult
    spectra: LayerSpectra | None = None
    candidates: set[str] = field(default_factory=set)


def plan_layers(checkpoint: Checkpoint, settings: AnalyzeSettings) -> list[MatrixSpec]:
    """The weight matrices to analyse, in storage order (the cheapest to read in).

    A fused expert tensor contributes one spec per expert matrix (matrices.py).
    """
    specs = [
        spec
        for info in checkpoint.stored()
        for spec in matrix_specs(
            info.key, info.shape, info.dtype, settings.min_evals, info.storage_label, checkpoint.model_type,
            info.unreadable,
        )
    ]
    if not specs:
        raise HtsrError(f"{checkpoint.source}: no weight matrices found (no tensor of 2 or more dimensions named *weight)")
    return select_layers(specs, settings.layers)


def memory_budget(settings: AnalyzeSettings, solver: Eigensolver) -> tuple[int, str]:
    """(bytes the solves may use, where that number comes from) -- the second for skip reasons."""
    if settings.max_memory is not None:
        return int(settings.max_memory), "--max-memory"
    available = available_bytes(solver.device)
    if available is None:  # the platform does not say: nothing to check against
        return 1 << 62, "unknown"
    where = "free GPU memory" if solver.device.type == "cuda" else "available memory"
    return available, f"{where}; --max-memory sets it"


# --randomize: per element of a layer, the int64 permutation and the shuffled copy (at most
# float64) that `shuffled_slices` makes while the layer's own stack is still held.
SHUFFLE_BYTES_PER_ELEMENT = 8 + 8


def work_bytes(spec: MatrixSpec, settings: AnalyzeSettings, solver: Eigensolver) -> int:
    count, rows, cols = spec.slice_grid
    need = solver.work_bytes(count, rows, cols, spec.dtype or torch.float32, settings.farms is not None)
    if settings.randomize:
        need += count * rows * cols * SHUFFLE_BYTES_PER_ELEMENT
    return need


def within_budget(
    spec: MatrixSpec, settings: AnalyzeSettings, solver: Eigensolver, budget: tuple[int, str]
) -> MatrixSpec:
    """The spec, or the spec skipped with a reason when solving it needs more memory than the budget."""
    need = work_bytes(spec, settings, solver)
    limit, source = budget
    if spec.skip_reason is not None or need <= limit:
        return spec
    reason = (
        f"needs {format_bytes(need)} for its Gram matrix and eigensolver, over the memory budget of "
        f"{format_bytes(limit)} ({source})"
    )
    return replace(spec, skip_reason=reason)


def _read_and_batch(
    checkpoint: Checkpoint,
    specs: list[MatrixSpec],
    order: list[int],
    settings: AnalyzeSettings,
    solver: Eigensolver,
    cap_bytes: int,
    times: StageTimes,
) -> Iterator[Batch]:
    """Read the tensors of `specs` in `order` (each once, moved to the device) and group them into batches.

    Runs on the loader thread. A batch holds views of the tensors it needs, so
    a tensor is freed as soon as the last batch using it is solved.
    """
    batch = Batch()
    position = 0
    while position < len(order):
        key = specs[order[position]].tensor
        end = position + 1
        while end < len(order) and specs[order[end]].tensor == key:  # a fused tensor's layers: one read
            end += 1
        weight = _timed_load(checkpoint, key, solver, times)
        for index in order[position:end]:
            spec = specs[index]
            count, rows, cols = spec.slice_grid
            stack = as_slices(weight, spec.part)
            gram_bytes = count * min(rows, cols) ** 2 * 24  # a Gram, its float64 copy, the eigensolver's copy
            if not batch.fits(stack, gram_bytes, cap_bytes):
                yield batch
                batch = Batch()
            batch.add(index, spec, stack, work_bytes(spec, settings, solver), gram_bytes)
        weight = stack = None  # the batch holds what it needs: do not pin it while reading the next
        position = end
    if batch.specs:
        yield batch


def _timed_load(checkpoint: Checkpoint, key: str, solver: Eigensolver, times: StageTimes) -> torch.Tensor:
    started = time.perf_counter()
    moved = 0.0

    def timed_transfer(stored: torch.Tensor) -> torch.Tensor:
        nonlocal moved
        begin = time.perf_counter()
        on_device = solver.transfer(stored)
        moved += time.perf_counter() - begin
        return on_device

    weight = checkpoint.load_for(key, timed_transfer)
    times.add("transfer", moved)
    times.add("read", time.perf_counter() - started - moved)
    return weight


def _not_finite_reason(stack: torch.Tensor, gram_dtype: torch.dtype, solver: Eigensolver) -> str:
    """Why a layer's Gram is not finite: NaN/Inf weights, or weights too large for the Gram's dtype."""
    if not solver.all_finite(stack):
        return "non-finite weights"
    upcast = stack.element_size() == 1  # float8 has no abs/max: exactly representable in float32
    largest = max(float((matrix.float() if upcast else matrix).abs().max()) for matrix in stack)
    if gram_dtype == torch.float64:
        return f"the Gram matrix overflows float64 (largest |weight| {largest:.3g})"
    return f"the Gram matrix overflows float32 (largest |weight| {largest:.3g}); --precision float64 forms it in float64"


def _solve_batch(
    batch: Batch,
    settings: AnalyzeSettings,
    solver: Eigensolver,
    times: StageTimes | None,
    keep_spectra: bool,
    fits: Executor | None,
) -> tuple[list[tuple[int, _Outcome | Future]], str]:
    """Solve one batch: batched Grams and eigensolver, then each layer's FARMS and fit.

    Returns (position, outcome) per layer and the Gram's dtype name. Fits run
    here, or on `fits` (the CPU pool beside a GPU), whose outcomes are futures.
    """
    clock = _StageClock(solver, times)
    grams = solver.grams(merge_runs(batch.stacks))  # [slices, side, side], lower triangles
    bounds = [0]
    for stack in batch.stacks:
        bounds.append(bounds[-1] + stack.shape[0])
    finite = solver.finite_grams(grams).tolist()  # one host sync
    usable = [all(finite[lo:hi]) for lo, hi in zip(bounds, bounds[1:])]
    rows = [row for k, ok in enumerate(usable) if ok for row in range(bounds[k], bounds[k + 1])]
    # NaN or Inf would break the eigensolver: only the finite layers' Grams go in.
    values = solver.eigenvalues(grams if len(rows) == len(finite) else grams[rows])  # [len(rows), side]
    if fits is not None:
        values = values.cpu()  # one copy for the whole batch: the fits run on the CPU
    clock.lap("solve")
    guarded = solver.precision.guarded
    outcomes: list[tuple[int, _Outcome | Future]] = []
    start = 0
    for k, (index, spec, stack) in enumerate(zip(batch.indices, batch.specs, batch.stacks)):
        if not usable[k]:
            result = _layer_result(spec)
            result.status, result.reason = FAILED, _not_finite_reason(stack, grams.dtype, solver)
            outcomes.append((index, _Outcome(result)))
            continue
        layer_values = values[start : start + stack.shape[0]]  # [n, side]
        start += stack.shape[0]
        scale = settings.conv_scale if spec.kind in CONV_KINDS else 1.0
        farms = None
        if settings.farms is not None:
            clock.restart()  # the previous layer's fit timed itself
            farms = farms_fit(stack, spec.kind, settings.farms, solver, settings.xmin, scale)
            clock.lap("farms")
        shuffles = None
        if settings.randomize:
            clock.restart()
            shuffles = shuffled_spectra(stack, spec, settings.seed, solver, scale)
            clock.lap("solve")
        # float32 mode keeps the layer's Grams until its fit says whether float64 is needed.
        redo = partial(_float64_values, solver, grams[bounds[k] : bounds[k + 1]], layer_values.device) if guarded else None
        fit = partial(_fit_layer, spec, layer_values, redo, scale, farms, shuffles, settings, keep_spectra, times)
        outcomes.append((index, fits.submit(fit) if fits is not None else fit()))
    return outcomes, dtype_name(grams.dtype)


def layer_generator(seed: int, name: str) -> torch.Generator:
    """The random stream of one layer's shuffles: from the run's seed and the layer's name alone,
    so a layer is shuffled alike whatever it is batched with, on any device or rank."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def shuffled_spectra(
    stack: torch.Tensor, spec: MatrixSpec, seed: int, solver: Eigensolver, scale: float
) -> list[np.ndarray]:
    """The pooled ESDs of the layer's weights shuffled element-wise within each slice (WeightWatcher's
    randomization): one shuffle, or 5 when the layer has fewer than 100 eigenvalues.

    One shuffled copy of the layer at a time, solved by the same eigensolver as every matrix.
    """
    generator = layer_generator(seed, spec.name)
    count, rows, cols = spec.slice_grid
    spectra = []
    for _ in range(replicas_for(count * min(rows, cols))):
        values = solver.pooled_eigenvalues(shuffled_slices(stack, generator), scale)
        spectra.append(values.cpu().numpy())
    return spectra


def _float64_values(solver: Eigensolver, grams: torch.Tensor, device: torch.device) -> torch.Tensor:
    return solver.eigenvalues(grams, float64=True).to(device)


def _fit_layer(
    spec: MatrixSpec,
    values: torch.Tensor,
    redo: Callable[[], torch.Tensor] | None,
    scale: float,
    farms: FarmsResult | None,
    shuffles: list[np.ndarray] | None,
    settings: AnalyzeSettings,
    keep_spectra: bool,
    times: StageTimes | None,
) -> _Outcome:
    """One solved layer's numbers from its eigenvalues [n, side] (and its FARMS result).

    `redo` (float32 mode) gives the eigenvalues again, solved in float64 from the
    same Grams, for when the guard finds float32 not accurate enough.
    """
    started = time.perf_counter()

    def pooled(float64: bool) -> torch.Tensor:
        layer_values = (redo() if float64 else values).flatten()
        return torch.sort(layer_values * scale if scale != 1.0 else layer_values).values

    esd, fit, redone = guarded_fit(
        pooled, settings.xmin, values.shape[-1], redo is not None, settings.small_n, settings.fix_fingers
    )
    result = _layer_result(spec)
    for key, value in spectral_metrics(esd, fit).items():
        setattr(result, key, value)
    if fit is not None and settings.fix_fingers != "none":
        result.raw_alpha, result.num_fingers = fit.raw_alpha, fit.num_fingers
    if settings.fit != "pl":
        tpl = fit_truncated_power_law(esd.cpu().numpy(), settings.fit)
        if tpl is not None:
            result.alpha_tpl, result.lambda_tpl, result.xmin_tpl = tpl.alpha, tpl.lambda_, tpl.xmin
            result.ks_distance_tpl, result.tail_size_tpl = tpl.ks_distance, tpl.tail_size
    result.quality = quality_of(result.alpha, settings.xmin)
    if fit is None:
        result.status, result.reason = FIT_FAILED, fit_failure_reason(esd, settings.xmin)
    if settings.mp_fit or shuffles is not None or settings.detx:
        _count, rows, cols = spec.slice_grid
        extra = layer_metrics(
            esd.cpu().numpy(), rows, cols, mp=settings.mp_fit, shuffles=shuffles, with_detx=settings.detx,
            xmin=result.xmin, tail_size=result.tail_size,
        )
        for key, value in extra.items():
            setattr(result, key, value)
    candidates = {fit.candidates} if fit else set()
    if farms is not None:
        result.alpha_farms = farms.alpha
        result.xmin_farms = farms.xmin
        result.ks_distance_farms = farms.ks_distance
        result.farms_windows = farms.windows
        result.farms_num_evals = farms.num_evals
        candidates |= farms.candidates
    if redo is not None:  # true when any of the layer's eigensolves had to be redone
        result.eigensolver_redone = bool(redone or (farms is not None and farms.redone))
    spectra = None
    if keep_spectra:
        spectra = LayerSpectra(esd.cpu(), None if farms is None else farms.pooled.cpu())
    if times is not None:
        times.add("fit", time.perf_counter() - started)
    return _Outcome(result, spectra, candidates)


def _fits_on_a_pool(solver: Eigensolver) -> bool:
    """Beside a GPU the CPU is idle: fits go to a CPU pool, off the GPU's critical path."""
    return solver.device.type != "cpu"


def solve_layers(
    checkpoint: Checkpoint,
    specs: list[MatrixSpec],
    settings: AnalyzeSettings,
    solver: Eigensolver,
    *,
    progress: ProgressCallback | None = None,
    keep_spectra: bool = False,
    times: StageTimes | None = None,
) -> SolvedLayers:
    """Read, solve and fit every spec; results come back in the order of `specs`.

    Specs whose solve needs more memory than the budget (`--max-memory`, else
    the memory available now) come back skipped, before anything is read. With
    `times`, each stage's seconds are added to it (the device is synchronised
    between stages so each is timed alone).
    """
    budget = memory_budget(settings, solver)
    specs = [within_budget(spec, settings, solver, budget) for spec in specs]
    outcomes: list[_Outcome | Future] = [
        _Outcome(replace(_layer_result(spec), status=SKIPPED, reason=spec.skip_reason)) for spec in specs
    ]
    order = [index for index in batch_order(specs) if specs[index].skip_reason is None]
    counters = times if times is not None else StageTimes()
    gram_precisions: set[str] = set()
    done = len(specs) - len(order)
    cores = torch.get_num_threads()
    fits_on_a_pool = _fits_on_a_pool(solver)
    # Two solves at once on a multi-core CPU (one thread set each); one on a GPU,
    # whose fits leave the solve thread for a pool of single-threaded CPU workers.
    slots = 2 if not fits_on_a_pool and settings.concurrent_solves and cores >= 2 else 1
    fit_threads = min(FIT_THREADS, max(1, cores - 1))
    fit_pool_context = worker_pool(fit_threads, "htsr-fit", torch.set_num_threads, (1,)) if fits_on_a_pool else nullcontext()
    unfitted: list[Future] = []

    def started(batch: Batch) -> None:
        if progress is not None:
            progress(done, len(specs), batch.specs[0].name)

    def collect(solved_batch: tuple[list[tuple[int, _Outcome | Future]], str]) -> None:
        nonlocal done
        layer_outcomes, gram_precision = solved_batch
        gram_precisions.add(gram_precision)
        for index, outcome in layer_outcomes:
            outcomes[index] = outcome
            if isinstance(outcome, Future):
                unfitted.append(outcome)
        done += len(layer_outcomes)
        counters.add("matrices", len(layer_outcomes))
        counters.add("batches", 1)
        # Bound the fits waiting on the pool (in float32 mode each holds its Grams on the device).
        waiting = [future for future in unfitted if not future.done()]
        while len(waiting) > FIT_BACKLOG * fit_threads:
            wait(waiting, return_when=FIRST_COMPLETED)
            waiting = [future for future in waiting if not future.done()]

    produce = partial(
        _read_and_batch, checkpoint, specs, order, settings, solver, min(GRAM_BUDGET_BYTES, budget[0]), counters
    )
    with fit_pool_context as fit_pool, closing(prefetched(produce)) as batches:
        solve = partial(
            _solve_batch, settings=settings, solver=solver, times=times, keep_spectra=keep_spectra, fits=fit_pool
        )
        run_batches(
            batches,
            solve,
            collect,
            slots=slots,
            threads=solver.eigensolver_threads if slots > 1 else cores,
            budget=budget[0],
            started=started,
        )
        finished = [outcome.result() if isinstance(outcome, Future) else outcome for outcome in outcomes]
    if progress is not None:
        progress(len(specs), len(specs), "")
    solved = SolvedLayers([], {}, set(), gram_precisions)
    for outcome in finished:
        solved.layers.append(outcome.result)
        solved.candidates |= outcome.candidates
        if outcome.spectra is not None:
            solved.spectra[outcome.result.name] = outcome.spectra
    return solved


def analyze(
    source: Source,
    settings: AnalyzeSettings | None = None,
    *,
    xmin: str | None = None,
    farms: FarmsSettings | bool | None = None,
    device: str | None = None,
    precision: str | None = None,
    conv_scale: float | None = None,
    min_evals: int | None = None,
    layers: str | None = None,
    max_memory: int | str | None = None,
    concurrent_solves: bool | None = None,
    fit: str | None = None,
    fix_fingers: str | None = None,
    small_n: str | None = None,
    mp_fit: bool | None = None,
    randomize: bool | None = None,
    seed: int | None = None,
    detx: bool | None = None,
    progress: ProgressCallback | None = None,
    keep_spectra: bool = False,
    profile: bool = False,
    collective: bool = True,
) -> Report:
    """Analyse every weight matrix of a checkpoint, module or state dict.

    `source` is a path (file, Hugging Face directory, PEFT adapter directory), a
    hub id, an `nn.Module`, a state dict, or `MergedAdapter(adapter, base)` (the
    adapter merged into its base). Settings come as an `AnalyzeSettings`, or as keywords
    (each left out keeps its `AnalyzeSettings` default):

    - `xmin`: "ks" (default, WeightWatcher), "median" (TempBalance) or "peak" (AlphaPruning)
    - `farms`: True or a `FarmsSettings(window, q, steps)` to also fit alpha_farms
    - `device`: "auto" (default: CUDA when available), "cpu" or "cuda"
    - `precision`: "mixed" (default: float32 Gram, float64 eigensolver), "float64" or "float32"
    - `conv_scale`: factor on conv eigenvalues (1.0; 0.5 reproduces WeightWatcher)
    - `min_evals`: layers with fewer eigenvalues are skipped (10)
    - `layers`: regex on module name or tensor key; only matching matrices are analysed
    - `max_memory`: bytes (or "8GB", "512MiB") one layer's solve may use; layers over it are skipped
    - `concurrent_solves`: two solves at once on a multi-core CPU (True; same numbers either way)
    - `fit`: "pl" (default), or "tpl" / "e_tpl" to also fit WeightWatcher's truncated power law
    - `fix_fingers`: "none" (default) or "clip_xmax" (WeightWatcher's finger clipping)
    - `small_n`: "htsr" (default) or "ww" (WeightWatcher's fit below 20 eigenvalues; xmin="ks")
    - `mp_fit`, `randomize` (with `seed`, 0), `detx`: WeightWatcher's Marchenko-Pastur fit, randomization
      and detX passes (False; docs/weightwatcher.md)

    `progress(done, total, layer)` is called before each layer. With
    `keep_spectra`, `report.spectra` holds each layer's sorted eigenvalues (for
    plots); with `profile`, `report.timings` holds the seconds per stage (read,
    transfer, solve, fit, farms). A bad setting raises `InvalidSetting` naming
    the parameter (`min_evals=1: must be at least 2`).

    Under torchrun (WORLD_SIZE > 1) the call is collective: every rank makes it
    with the same arguments, the ranks share the matrices, and every rank
    returns the same report; spectra (`keep_spectra`) and stage times summed
    over the ranks are on rank 0 only. See `htsr_cli.engine.distributed`.
    With `collective=False` this process analyses everything alone even under
    torchrun (a training callback analyses on rank 0 and broadcasts the result).
    """
    keywords = {
        "xmin": xmin,
        "farms": FarmsSettings() if farms is True else (farms or None),
        "device": device,
        "precision": precision,
        "conv_scale": conv_scale,
        "min_evals": min_evals,
        "layers": layers,
        "max_memory": max_memory,
        "concurrent_solves": concurrent_solves,
        "fit": fit,
        "fix_fingers": fix_fingers,
        "small_n": small_n,
        "mp_fit": mp_fit,
        "randomize": randomize,
        "seed": seed,
        "detx": detx,
    }
    given = {key: value for key, value in keywords.items() if value is not None}
    if settings is None:
        settings = AnalyzeSettings(**given)
    elif given:
        raise TypeError(f"pass either settings or keyword settings ({', '.join(given)}), not both")
    cluster = distributed.current() if collective else None
    if cluster is None:
        return _analyze(source, settings, None, progress, keep_spectra, profile)
    run = cluster.begin(source, settings, keep_spectra, profile)
    with run.failures_shared():
        return _analyze(source, settings, run, progress, keep_spectra, profile)


def _analyze(
    source: Source,
    settings: AnalyzeSettings,
    run: distributed.Run | None,
    progress: ProgressCallback | None,
    keep_spectra: bool,
    profile: bool,
) -> Report:
    """One process's part of `analyze`: all of it alone, or its share of `run`."""
    started = time.perf_counter()
    if run is not None:
        run.cluster.use_device(settings.device)
    solver = Eigensolver.create(settings.device, SolverPrecision.for_settings(settings))
    if run is not None:
        run.ensure_group(solver.device)
    times = StageTimes() if profile else None
    assembles = run is None or run.is_root
    with open_checkpoint(source) as checkpoint, ThreadPoolExecutor(1, "htsr-order") as pool:
        # Module order can need the architecture (transformers on the meta device):
        # work it out beside the solves, read in storage order, sort at the end.
        module_order = pool.submit(lambda: [info.key for info in checkpoint.tensors()]) if assembles else None
        specs = plan_layers(checkpoint, settings)
        if run is None:
            solved = solve_layers(
                checkpoint, specs, settings, solver, progress=progress, keep_spectra=keep_spectra, times=times
            )
        else:
            solved = _solve_share(run, checkpoint, specs, settings, solver, progress, keep_spectra, times)
        report = None
        if assembles:
            report = _assemble(
                checkpoint.source, checkpoint.format_info(), settings, solver, solved, module_order.result(),
                started, times,
            )
    if run is None:
        return report
    run.wait_for_all("assembled")
    shared = run.broadcast(dataclasses.replace(report, spectra={}) if run.is_root else None)
    return report if run.is_root else shared


def _assemble(
    source_name: str,
    checkpoint_format: dict | None,
    settings: AnalyzeSettings,
    solver: Eigensolver,
    solved: SolvedLayers,
    module_keys: list[str],
    started: float,
    times: StageTimes | None,
) -> Report:
    """The report: the solved layers in module order, the summary, the settings asked for and what the run used."""
    rank = {key: index for index, key in enumerate(module_keys)}
    layers = sorted(solved.layers, key=lambda layer: rank[layer.tensor])
    seconds = time.perf_counter() - started
    record = RunRecord(
        device=solver.device.type,
        xmin_candidates="grid" if "grid" in solved.candidates else "exact",
        gram_precisions=frozenset(solved.gram_precisions or {solver.precision.nominal_gram_precision}),
        eigensolver_precision=solver.precision.eigensolver_precision,
    )
    report = Report(
        checkpoint=source_name,
        settings=report_settings(settings, record),
        layers=layers,
        summary=summarize(layers, seconds, with_farms=settings.farms is not None, xmin=settings.xmin),
        htsr_version=__version__,
        checkpoint_format=checkpoint_format,
    )
    report.spectra = solved.spectra
    if times is not None:
        times.wall = seconds
        report.timings = times
    return report


def _solve_share(
    run: distributed.Run,
    checkpoint: Checkpoint,
    specs: list[MatrixSpec],
    settings: AnalyzeSettings,
    solver: Eigensolver,
    progress: ProgressCallback | None,
    keep_spectra: bool,
    times: StageTimes | None,
) -> SolvedLayers | None:
    """Solve this rank's share of `specs`; on rank 0, return every rank's results in the order of `specs`.

    Shares are cut by estimated flops, so a rank reads (and opens the shards of)
    only its own tensors. Other ranks return None.
    """
    share = run.share([estimated_flops(spec, settings.farms) for spec in specs])
    mine = solve_layers(
        checkpoint,
        [specs[index] for index in share],
        settings,
        solver,
        progress=run.progress(progress, len(specs)),
        keep_spectra=keep_spectra,
        times=times,
    )
    run.wait_for_all("solved", progress, len(specs))
    kept = [(name, spectra.farms is not None) for name, spectra in mine.spectra.items()]
    stage_times = times.to_json() if times is not None else None
    parts = run.gather((share, mine.layers, mine.candidates, mine.gram_precisions, stage_times, kept))
    tensors = [values for spectra in mine.spectra.values() for values in (spectra.esd, spectra.farms) if values is not None]
    received = run.gather_tensors(tensors) if keep_spectra else None
    return None if parts is None else _merged(specs, parts, received, times)


def _merged(
    specs: list[MatrixSpec],
    parts: list[tuple],
    received: list[list[torch.Tensor]] | None,
    times: StageTimes | None,
) -> SolvedLayers:
    """Every rank's (share, layers, candidates, Gram precisions, stage times, kept spectra) as one SolvedLayers.

    Layers and spectra come back in the order of `specs`.

    The stage times of the other ranks are added to `times` (rank 0's own).
    """
    results: list[LayerResult | None] = [None] * len(specs)
    found: dict[str, LayerSpectra] = {}
    candidates: set[str] = set()
    gram_precisions: set[str] = set()
    for rank, (indices, layers, used, precisions, rank_times, kept) in enumerate(parts):
        for index, layer in zip(indices, layers):
            results[index] = layer
        candidates |= used
        gram_precisions |= precisions
        values = iter(received[rank] if received is not None else ())
        for name, has_farms in kept:
            found[name] = LayerSpectra(next(values), next(values) if has_farms else None)
        if times is not None and rank > 0:
            for stage, amount in rank_times.items():
                if stage != "wall":  # rank 0's wall time is the run's
                    times.add(stage, amount)
    spectra = {spec.name: found[spec.name] for spec in specs if spec.name in found}
    return SolvedLayers(results, spectra, candidates, gram_precisions)
