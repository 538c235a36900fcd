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
from dataclasses import dataclass
from os import PathLike
from typing import Any

import torch

from htsr_cli import __version__
from htsr_cli.checkpoints import Checkpoint, open_checkpoint
from htsr_cli.errors import HtsrError
from htsr_cli.fit import fit_power_law
from htsr_cli.matrices import MatrixSpec, as_slices, describe
from htsr_cli.metrics import spectral_metrics
from htsr_cli.report import FAILED, FIT_FAILED, OK, SKIPPED, LayerResult, Report, quality_of, summarize
from htsr_cli.settings import AnalyzeSettings
from htsr_cli.solver import Eigensolver

PREFETCH = 2
CONV_KINDS = ("conv1d", "conv2d")

Source = str | PathLike | torch.nn.Module | Mapping[str, torch.Tensor]
ProgressCallback = Callable[[int, int, str], None]


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
        raise HtsrError(f"--layers {pattern!r}: invalid regular expression ({error})") from None
    chosen = [spec for spec in specs if regex.search(spec.name) or regex.search(spec.tensor)]
    if not chosen:
        raise HtsrError(
            f"--layers {pattern!r} matches none of the {len(specs)} weight matrices "
            f"(e.g. {specs[0].name!r})"
        )
    return chosen


def _prefetched(
    checkpoint: Checkpoint, specs: list[MatrixSpec], solver: Eigensolver
) -> Iterator[tuple[MatrixSpec, torch.Tensor | None]]:
    """Yield (spec, slices on the solver's device) in order; None for specs not to be read."""
    slots: queue.Queue = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()

    def load_all() -> None:
        try:
            for spec in specs:
                if stop.is_set():
                    return
                slices = None
                if spec.skip_reason is None:
                    stored = checkpoint.load(spec.tensor)
                    slices = solver.to_device(as_slices(stored))
                    del stored
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
    )


def analyze_slices(
    spec: MatrixSpec,
    slices: torch.Tensor,
    settings: AnalyzeSettings,
    solver: Eigensolver,
) -> tuple[LayerResult, LayerSpectra | None, set[str]]:
    """Solve and fit one weight tensor given as [B, rows, cols] on the solver's device."""
    result = _layer_result(spec)
    if not bool(torch.isfinite(slices).all()):
        result.status, result.reason = FAILED, "non-finite weights"
        return result, None, set()
    scale = settings.conv_scale if spec.kind in CONV_KINDS else 1.0
    esd = solver.pooled_eigenvalues(slices, scale)
    fit = fit_power_law(esd, settings.xmin)
    for key, value in spectral_metrics(esd, fit).items():
        setattr(result, key, value)
    result.quality = quality_of(result.alpha)
    candidates = {fit.candidates} if fit else set()
    if fit is None:
        result.status, result.reason = FIT_FAILED, "no valid power-law fit (every candidate alpha <= 1)"
    farms_esd = None
    if settings.farms is not None:
        from htsr_cli.farms import farms_fit

        farms = farms_fit(slices, spec.kind, settings.farms, solver, settings.xmin)
        if farms is not None:
            result.alpha_farms = farms.alpha
            result.xmin_farms = farms.xmin
            result.ks_distance_farms = farms.ks_distance
            result.farms_windows = farms.windows
            result.farms_num_evals = farms.num_evals
            candidates |= farms.candidates
            farms_esd = farms.pooled
    return result, LayerSpectra(esd, farms_esd), candidates


def analyze(
    source: Source,
    settings: AnalyzeSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
    keep_spectra: bool = False,
    **options: Any,
) -> Report:
    """Analyse every weight matrix of a checkpoint, module or state dict.

    `source` is a path (file or Hugging Face directory), a hub id, an `nn.Module`
    or a state dict. Settings come as an `AnalyzeSettings` or as its fields by
    keyword (`analyze(model, xmin="median")`).
    """
    if settings is None:
        settings = AnalyzeSettings(**options)
    elif options:
        raise TypeError("pass either settings or keyword options, not both")
    started = time.perf_counter()
    solver = Eigensolver.create(settings.device, settings.precision)
    with open_checkpoint(source) as checkpoint:
        specs = [
            spec
            for info in checkpoint.tensors()
            if (spec := describe(info.key, info.shape, info.dtype, settings.min_evals)) is not None
        ]
        if not specs:
            raise HtsrError(f"{checkpoint.source}: no weight matrices found (no tensor of 2 or more dimensions named *weight)")
        specs = select_layers(specs, settings.layers)
        layers: list[LayerResult] = []
        spectra: dict[str, LayerSpectra] = {}
        candidates: set[str] = set()
        for done, (spec, slices) in enumerate(_prefetched(checkpoint, specs, solver), start=1):
            if progress is not None:
                progress(done - 1, len(specs), spec.name)
            if slices is None:
                result = _layer_result(spec)
                result.status, result.reason = SKIPPED, spec.skip_reason
            else:
                result, layer_spectra, used = analyze_slices(spec, slices, settings, solver)
                candidates |= used
                del slices
                if keep_spectra and layer_spectra is not None:
                    spectra[spec.name] = LayerSpectra(
                        layer_spectra.esd.cpu(),
                        None if layer_spectra.farms is None else layer_spectra.farms.cpu(),
                    )
            layers.append(result)
        if progress is not None:
            progress(len(specs), len(specs), "")
        source_name = checkpoint.source
    seconds = time.perf_counter() - started
    report = Report(
        checkpoint=source_name,
        settings=settings.to_json(solver.device.type, "grid" if "grid" in candidates else "exact"),
        layers=layers,
        summary=summarize(layers, seconds, with_farms=settings.farms is not None),
        htsr_version=__version__,
    )
    report.spectra = spectra
    return report
