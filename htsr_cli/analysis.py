"""The analysis pipeline: checkpoint -> matrices -> spectra -> fits -> Report.

Tensors stream through one at a time. A loader thread reads the next tensor
(and moves it to the solver's device) while the current one is solved, through
a queue of at most `PREFETCH` tensors, so IO hides behind compute and peak
memory is a few matrices whatever the model size.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from os import PathLike

import torch

from htsr_cli import __version__
from htsr_cli.checkpoints import Checkpoint, open_checkpoint
from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.farms import farms_fit
from htsr_cli.fit import fit_power_law
from htsr_cli.matrices import MatrixSpec, as_slices, describe
from htsr_cli.metrics import spectral_metrics
from htsr_cli.report import FAILED, FIT_FAILED, SKIPPED, LayerResult, Report, quality_of, summarize
from htsr_cli.settings import AnalyzeSettings, FarmsSettings
from htsr_cli.solver import Eigensolver

PREFETCH = 2
CONV_KINDS = ("conv1d", "conv2d")

Source = str | PathLike | torch.nn.Module | Mapping[str, torch.Tensor]
ProgressCallback = Callable[[int, int, str], None]


@dataclass
class StageTimes:
    """Seconds spent per pipeline stage (`--profile`).

    read and transfer run on the loader thread, concurrently with solve and fit
    on the main thread, so the stages can add up to more than the wall time.
    """

    read: float = 0.0
    transfer: float = 0.0
    solve: float = 0.0
    fit: float = 0.0
    farms: float = 0.0
    wall: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {key: round(value, 4) for key, value in self.__dict__.items()}


@dataclass
class LayerSpectra:
    """The eigenvalues behind one layer's numbers, kept only when asked (plots, reports)."""

    esd: torch.Tensor  # sorted pooled ESD, CPU float64
    farms: torch.Tensor | None = None  # sorted pooled FARMS ESD


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


def _prefetched(
    checkpoint: Checkpoint, specs: list[MatrixSpec], solver: Eigensolver, times: StageTimes
) -> Iterator[tuple[MatrixSpec, torch.Tensor | None]]:
    """Yield (spec, stored-dtype slices on the solver's device) in order; None for specs not to be read."""
    slots: queue.Queue = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()

    def load_all() -> None:
        try:
            for spec in specs:
                if stop.is_set():
                    return
                slices = None
                if spec.skip_reason is None:
                    started = time.perf_counter()
                    moved = 0.0

                    def timed_transfer(stored: torch.Tensor) -> torch.Tensor:
                        nonlocal moved
                        begin = time.perf_counter()
                        on_device = solver.transfer(stored)
                        moved += time.perf_counter() - begin
                        return on_device

                    slices = as_slices(checkpoint.load_for(spec.tensor, timed_transfer))
                    times.transfer += moved
                    times.read += time.perf_counter() - started - moved
                slots.put((spec, slices, None))
        except BaseException as error:  # handed to the consumer, which re-raises it
            slots.put((None, None, error))

    loader = threading.Thread(target=load_all, name="htsr-loader", daemon=True)
    loader.start()
    try:
        for _ in specs:
            spec, slices, error = slots.get()
            if error is not None:
                raise error
            yield spec, slices
            slices = None  # the consumer is done with it: do not pin it while fetching the next
    finally:
        stop.set()
        while loader.is_alive():  # unblock a loader waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                loader.join(timeout=0.05)


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


def analyze_slices(
    spec: MatrixSpec,
    slices: torch.Tensor,
    settings: AnalyzeSettings,
    solver: Eigensolver,
    times: StageTimes | None = None,
) -> tuple[LayerResult, LayerSpectra | None, set[str]]:
    """Solve and fit one weight tensor given as [B, rows, cols] (any float dtype, any device).

    With `times`, the device is synchronised between stages so each is timed alone.
    """
    result = _layer_result(spec)
    if not solver.all_finite(slices):
        result.status, result.reason = FAILED, "non-finite weights"
        return result, None, set()
    clock = _StageClock(solver, times)
    scale = settings.conv_scale if spec.kind in CONV_KINDS else 1.0
    esd = solver.pooled_eigenvalues(slices, scale)
    clock.lap("solve")
    fit = fit_power_law(esd, settings.xmin)
    for key, value in spectral_metrics(esd, fit).items():
        setattr(result, key, value)
    result.quality = quality_of(result.alpha)
    candidates = {fit.candidates} if fit else set()
    if fit is None:
        result.status, result.reason = FIT_FAILED, "no valid power-law fit (every candidate alpha <= 1)"
    farms_esd = None
    if settings.farms is not None:
        clock.lap("fit")
        farms = farms_fit(solver.prepare(slices), spec.kind, settings.farms, solver, settings.xmin, scale)
        clock.lap("farms")
        if farms is not None:
            result.alpha_farms = farms.alpha
            result.xmin_farms = farms.xmin
            result.ks_distance_farms = farms.ks_distance
            result.farms_windows = farms.windows
            result.farms_num_evals = farms.num_evals
            candidates |= farms.candidates
            farms_esd = farms.pooled
    else:
        clock.lap("fit")
    return result, LayerSpectra(esd, farms_esd), candidates


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
        setattr(self.times, stage, getattr(self.times, stage) + now - self.last)
        self.last = now


@dataclass
class SolvedLayers:
    """What solving a list of specs yields: one result per spec, in the specs' order."""

    layers: list[LayerResult]
    spectra: dict[str, LayerSpectra]  # name -> spectra, only with keep_spectra
    candidates: set[str]  # xmin candidate sets the fits used: "exact" / "grid"


def plan_layers(checkpoint: Checkpoint, settings: AnalyzeSettings) -> list[MatrixSpec]:
    """The weight matrices to analyse, in storage order (the cheapest to read in)."""
    specs = [
        spec
        for info in checkpoint.stored()
        if (spec := describe(info.key, info.shape, info.dtype, settings.min_evals, info.storage_label))
        is not None
    ]
    if not specs:
        raise HtsrError(f"{checkpoint.source}: no weight matrices found (no tensor of 2 or more dimensions named *weight)")
    return select_layers(specs, settings.layers)


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

    With `times`, each stage's seconds are added to it (the device is synchronised
    between stages so each is timed alone).
    """
    solved = SolvedLayers([], {}, set())
    loader_times = times if times is not None else StageTimes()
    with closing(_prefetched(checkpoint, specs, solver, loader_times)) as stream:
        for done in range(len(specs)):
            # next() rather than enumerate(): enumerate keeps its last result
            # tuple, pinning the previous layer's tensor while the next is fetched.
            spec, slices = next(stream)
            if progress is not None:
                progress(done, len(specs), spec.name)
            if slices is None:
                result = _layer_result(spec)
                result.status, result.reason = SKIPPED, spec.skip_reason
            else:
                result, layer_spectra, used = analyze_slices(spec, slices, settings, solver, times)
                solved.candidates |= used
                del slices
                if keep_spectra and layer_spectra is not None:
                    solved.spectra[spec.name] = LayerSpectra(
                        layer_spectra.esd.cpu(),
                        None if layer_spectra.farms is None else layer_spectra.farms.cpu(),
                    )
            solved.layers.append(result)
    if progress is not None:
        progress(len(specs), len(specs), "")
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
    progress: ProgressCallback | None = None,
    keep_spectra: bool = False,
    profile: bool = False,
) -> Report:
    """Analyse every weight matrix of a checkpoint, module or state dict.

    `source` is a path (file or Hugging Face directory), a hub id, an `nn.Module`
    or a state dict. Settings come as an `AnalyzeSettings`, or as keywords
    (each left out keeps its `AnalyzeSettings` default):

    - `xmin`: "ks" (default, WeightWatcher), "median" (TempBalance) or "peak" (AlphaPruning)
    - `farms`: True or a `FarmsSettings(window, q, steps)` to also fit alpha_farms
    - `device`: "auto" (default: CUDA when available), "cpu" or "cuda"
    - `precision`: solver precision, "float64" by default
    - `conv_scale`: factor on conv eigenvalues (1.0; 0.5 reproduces WeightWatcher)
    - `min_evals`: layers with fewer eigenvalues are skipped (10)
    - `layers`: regex on module name or tensor key; only matching matrices are analysed

    `progress(done, total, layer)` is called before each layer. With
    `keep_spectra`, `report.spectra` holds each layer's sorted eigenvalues (for
    plots); with `profile`, `report.timings` holds the seconds per stage (read,
    transfer, solve, fit, farms). A bad setting raises `InvalidSetting` naming
    the parameter (`min_evals=1: must be at least 2`).
    """
    keywords = {
        "xmin": xmin,
        "farms": FarmsSettings() if farms is True else (farms or None),
        "device": device,
        "precision": precision,
        "conv_scale": conv_scale,
        "min_evals": min_evals,
        "layers": layers,
    }
    given = {key: value for key, value in keywords.items() if value is not None}
    if settings is None:
        settings = AnalyzeSettings(**given)
    elif given:
        raise TypeError(f"pass either settings or keyword settings ({', '.join(given)}), not both")
    started = time.perf_counter()
    solver = Eigensolver.create(settings.device, settings.precision)
    times = StageTimes() if profile else None
    with open_checkpoint(source) as checkpoint, ThreadPoolExecutor(1, "htsr-order") as pool:
        # Module order can need the architecture (transformers on the meta device):
        # work it out beside the solves, read in storage order, sort at the end.
        module_order = pool.submit(lambda: [info.key for info in checkpoint.tensors()])
        specs = plan_layers(checkpoint, settings)
        solved = solve_layers(
            checkpoint, specs, settings, solver, progress=progress, keep_spectra=keep_spectra, times=times
        )
        rank = {key: index for index, key in enumerate(module_order.result())}
        layers = sorted(solved.layers, key=lambda layer: rank[layer.tensor])
        source_name = checkpoint.source
    seconds = time.perf_counter() - started
    report = Report(
        checkpoint=source_name,
        settings=settings.to_json(solver.device.type, "grid" if "grid" in solved.candidates else "exact"),
        layers=layers,
        summary=summarize(layers, seconds, with_farms=settings.farms is not None),
        htsr_version=__version__,
    )
    report.spectra = solved.spectra
    if times is not None:
        times.wall = seconds
        report.timings = times
    return report
