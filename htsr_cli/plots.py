"""Pictures of a report: one ESD plot per analysed layer and a per-model overview.

    write_plots(report, "plots/")   # needs analyze(..., keep_spectra=True)

Only the commands that draw import this module, so `htsr analyze` without
`--plots` never loads matplotlib. Figures are built from `matplotlib.figure.Figure`
directly and rendered by Agg (no pyplot): no GUI backend and no global figure
registry, so nothing holds a figure once its PNG bytes exist. PNGs carry no
software/version metadata, so the same report always gives the same bytes.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from htsr_cli.analysis import LayerSpectra
from htsr_cli.errors import HtsrError
from htsr_cli.io import write_atomic
from htsr_cli.report import LayerResult, Report, quality_of

OVERVIEW_FILE = "overview.png"
PLOT_DPI = 100
QUALITY_COLORS = {"ok": "#2ca02c", "under-trained": "#ff7f0e", "over-trained": "#d62728", "unknown": "#7f7f7f"}
ESD_COLOR = "#1f77b4"
FARMS_COLOR = "#9467bd"
ALPHA_BAND = (2.0, 6.0)  # quality thresholds (algorithms.md section 4)
NAMED_TICKS_MAX = 80  # above this many layers the overview labels blocks, not layers
MAX_STEM = 200  # file names stay well under the usual 255-byte limit


def png_bytes(figure: Figure, dpi: int = PLOT_DPI) -> bytes:
    """Render a figure to PNG bytes without timestamps or version strings."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def plot_file_names(names: Iterable[str]) -> dict[str, str]:
    """A filesystem-safe PNG name per layer, distinct even on case-insensitive disks and never overview.png."""
    taken = {OVERVIEW_FILE}
    files: dict[str, str] = {}
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:MAX_STEM] or "layer"
        file, suffix = f"{stem}.png", 2
        while file.lower() in taken:
            file, suffix = f"{stem}-{suffix}.png", suffix + 1
        taken.add(file.lower())
        files[name] = file
    return files


def power_law_density(x: np.ndarray, alpha: float, xmin: float, tail_fraction: float) -> np.ndarray:
    """The fitted Pareto tail as a density over the whole spectrum.

    p(x) = (alpha - 1) / xmin * (x / xmin)^-alpha integrates to 1 over [xmin, inf);
    scaling by the tail's share n / N of the eigenvalues puts it on the histogram's scale.
    """
    return tail_fraction * (alpha - 1.0) / xmin * (x / xmin) ** (-alpha)


def log_histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(density, edges) on log-spaced bins over the positive values.

    The density is per eigenvalue of the whole spectrum (zeros included), so the
    bars above xmin hold the same mass n / N as the fitted tail.
    """
    positive = values[values > 0]
    low, high = float(positive.min()), float(positive.max())
    if low == high:
        low, high = low / 1.1, high * 1.1
    bins = int(np.clip(np.sqrt(positive.size), 10, 100))
    edges = np.geomspace(low, high, bins + 1)
    counts, _ = np.histogram(positive, edges)
    return counts / (values.size * np.diff(edges)), edges


def _draw_spectrum(
    axes, values: np.ndarray, alpha: float | None, xmin: float | None,
    tail_fraction: float, color: str, label: str, filled: bool,
) -> None:
    """One spectrum's histogram, its fitted tail (dashed) and its xmin (dotted)."""
    density, edges = log_histogram(values)
    axes.stairs(density, edges, color=color, alpha=0.35 if filled else 0.9, fill=filled,
                label=f"{label} ({values.size} eigenvalues)")
    if alpha is None or xmin is None:
        return
    x = np.geomspace(xmin, float(values.max()), 200)
    axes.plot(x, power_law_density(x, alpha, xmin, tail_fraction), "--", color=color, linewidth=2,
              label=f"{label} fit: alpha {alpha:.3f}")
    axes.axvline(xmin, color=color, linestyle=":", linewidth=1.5, label=f"{label} xmin {xmin:.4g}")


def esd_figure(layer: LayerResult, spectra: LayerSpectra) -> Figure:
    """Log-log density of one layer's ESD with its power-law fit (and FARMS's, when present)."""
    # Fixed margins and unlabelled minor ticks: layout engines and minor-label
    # text measuring cost several times the drawing, and a big model has hundreds of these.
    figure = Figure(figsize=(6.4, 4.4))
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.86)
    axes = figure.add_subplot()
    esd = spectra.esd.double().numpy()
    tail_fraction = (layer.tail_size or 0) / esd.size
    _draw_spectrum(axes, esd, layer.alpha, layer.xmin, tail_fraction, ESD_COLOR, "ESD", filled=True)
    # One FARMS window covering the whole matrix pools exactly the ESD: nothing to overlay.
    farms_differs = spectra.farms is not None and not torch.equal(spectra.farms, spectra.esd)
    if farms_differs and layer.alpha_farms is not None and layer.xmin_farms is not None:
        pool = spectra.farms.double().numpy()
        # conv layers average alpha and xmin over divisions: the line shows that averaged fit
        farms_tail = float(np.count_nonzero(pool >= layer.xmin_farms)) / pool.size
        _draw_spectrum(axes, pool, layer.alpha_farms, layer.xmin_farms, farms_tail, FARMS_COLOR, "FARMS", filled=False)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(r"eigenvalue $\lambda$ of $W^T W$")
    axes.set_ylabel("density")
    if layer.alpha is None:
        fit = f"fit failed: {layer.reason}"
    else:
        fit = f"alpha {layer.alpha:.3f}   D {layer.ks_distance:.3f}   tail {layer.tail_size}/{esd.size}"
        if layer.alpha_farms is not None:
            fit += f"   alpha_farms {layer.alpha_farms:.3f}"
    axes.set_title(f"{layer.name}\n{fit}", fontsize=9, parse_math=False)
    axes.legend(fontsize=7, loc="lower left")
    return figure


def _block_runs(layers: list[LayerResult]) -> list[tuple[str | None, int, int]]:
    """(block, first index, last index) for each run of consecutive layers in one block."""
    runs: list[tuple[str | None, int, int]] = []
    for index, layer in enumerate(layers):
        if runs and runs[-1][0] is not None and runs[-1][0] == layer.block:
            runs[-1] = (layer.block, runs[-1][1], index)
        else:
            runs.append((layer.block, index, index))
    return runs


def _label_layers(axes, layers: list[LayerResult], runs: list[tuple[str | None, int, int]]) -> None:
    """Layer names under each point, block names on top; only blocks when layers are too many to name."""
    centres = [((first + last) / 2, block) for block, first, last in runs if block is not None]
    if len(layers) <= NAMED_TICKS_MAX:
        axes.set_xticks(range(len(layers)), [layer.name for layer in layers], rotation=90, fontsize=7, parse_math=False)
        top = axes.secondary_xaxis("top")
        top.set_xticks([x for x, _ in centres], [block for _, block in centres], fontsize=7, parse_math=False)
        top.tick_params(length=0)
    else:
        ticks = [((first + last) / 2, block or layers[first].name) for block, first, last in runs]
        axes.set_xticks([x for x, _ in ticks], [label for _, label in ticks], rotation=90, fontsize=7, parse_math=False)


def overview_figure(report: Report) -> Figure:
    """alpha (and alpha_farms) per analysed layer in model order, coloured by quality, blocks shaded."""
    layers = [layer for layer in report.layers if layer.analysed]
    count = max(len(layers), 1)
    inches_per_layer = 0.22 if count <= NAMED_TICKS_MAX else 0.12
    figure = Figure(figsize=(float(np.clip(2.0 + inches_per_layer * count, 8.0, 36.0)), 5.5), layout="constrained")
    axes = figure.add_subplot()
    runs = _block_runs(layers)
    for shade, (_, first, last) in enumerate(run for run in runs if run[0] is not None):
        if shade % 2 == 0:
            axes.axvspan(first - 0.5, last + 0.5, color="0.93", zorder=0)
    axes.axhspan(*ALPHA_BAND, color=QUALITY_COLORS["ok"], alpha=0.06, zorder=0)
    for threshold in ALPHA_BAND:
        axes.axhline(threshold, color="0.4", linestyle="--", linewidth=1, zorder=1)
    values = [v for layer in layers for v in (layer.alpha, layer.alpha_farms) if v is not None]
    bottom, top = min([1.0, *values]) - 0.2, max([7.0, *values]) * 1.05
    handles = [
        Line2D([], [], marker="o", linestyle="", color=color, label=quality)
        for quality, color in QUALITY_COLORS.items() if quality != "unknown"
    ]
    series = [("alpha", "o", True), ("alpha_farms", "D", False)] if report.has_farms else [("alpha", "o", True)]
    for field, marker, filled in series:
        points = [(i, layer.metric(field)) for i, layer in enumerate(layers) if layer.metric(field) is not None]
        colors = [QUALITY_COLORS[quality_of(value)] for _, value in points]
        axes.scatter(
            [i for i, _ in points], [value for _, value in points], marker=marker, s=28, zorder=3,
            c=colors if filled else "none", edgecolors=colors, linewidths=1.2,
        )
    if report.has_farms:
        handles.append(Line2D([], [], marker="D", linestyle="", markerfacecolor="none", markeredgecolor="0.3", label="alpha_farms"))
    failed = [i for i, layer in enumerate(layers) if layer.alpha is None]
    if failed:  # a failed fit has no alpha, but its place in the model should still show
        axes.scatter(failed, [bottom + 0.03 * (top - bottom)] * len(failed), marker="x", color=QUALITY_COLORS["unknown"], zorder=3)
        handles.append(Line2D([], [], marker="x", linestyle="", color=QUALITY_COLORS["unknown"], label="fit failed"))
    handles.append(Line2D([], [], color="0.4", linestyle="--", label="alpha = 2 and 6"))
    _label_layers(axes, layers, runs)
    axes.set_xlim(-0.5, count - 0.5)
    axes.set_ylim(bottom, top)
    axes.set_ylabel("alpha")
    axes.set_title(f"{report.checkpoint}: power-law alpha per layer ({len(layers)} analysed)", parse_math=False)
    axes.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def layer_spectra(report: Report, layer: LayerResult) -> LayerSpectra:
    spectra = report.spectra.get(layer.name)
    if spectra is None:
        raise ValueError(f"no spectrum kept for layer {layer.name!r}: analyze with keep_spectra=True")
    return spectra


def write_plots(report: Report, directory: str | Path, dpi: int = PLOT_DPI) -> list[Path]:
    """Write one ESD PNG per analysed layer plus overview.png into `directory` (created if missing)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise HtsrError(f"{directory}: exists and is not a directory (plots need a directory)") from None
    analysed = [layer for layer in report.layers if layer.analysed]
    files = plot_file_names(layer.name for layer in analysed)
    written = []
    for layer in analysed:
        path = directory / files[layer.name]
        write_atomic(path, png_bytes(esd_figure(layer, layer_spectra(report, layer)), dpi))
        written.append(path)
    path = directory / OVERVIEW_FILE
    write_atomic(path, png_bytes(overview_figure(report), dpi))
    written.append(path)
    return written
