"""Pictures of a report: per-layer ESD and fit-diagnostics plots and a per-model overview.

    write_plots(report, "plots/")             # needs analyze(..., keep_spectra=True)
    write_plots(report, "plots/", "svg")      # or pdf; png takes a dpi

Only the commands that draw import this module, so `htsr analyze` without
`--plots` never loads matplotlib. Figures are built from `matplotlib.figure.Figure`
directly and rendered by Agg (no pyplot): no GUI backend and no global figure
registry, so nothing holds a figure once its bytes exist. Files carry no
software/version/date metadata, so the same report always gives the same bytes.

Spectra from a checkpoint or a saved file can be degenerate (an all-zero LoRA B
matrix, round-off negatives, NaN from a damaged file): every figure draws the
positive finite eigenvalues it can and says in words what it left out.
"""

from __future__ import annotations

import io
import math
import os
import re
import textwrap
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from htsr_cli.results.report import LayerSpectra
from htsr_cli.errors import HtsrError
from htsr_cli.spectra.fit import KS_MIN_EIGENVALUE, candidate_grid, hill_alphas, ks_distances
from htsr_cli.io import staged_directory, write_atomic
from htsr_cli.names import readable
from htsr_cli.results.report import QUALITY_CLASSES, LayerResult, Report, quality_of
from htsr_cli.render.terminal import shorten_middle
from htsr_cli.settings import QUALITY_BANDS, ProgressCallback

FORMATS = ("png", "svg", "pdf")
DEFAULT_DPI = 150
OVERVIEW_STEM = "overview"
FIT_DIRECTORY = "fit"  # fit-diagnostics figures, one per layer, beside the ESDs
QUALITY_COLORS = {"ok": "#2ca02c", "under-trained": "#ff7f0e", "over-trained": "#d62728", "unknown": "#7f7f7f"}
# Shape as well as colour, so the classes read in grey-scale print and for colour-blind readers.
QUALITY_MARKERS = {"ok": "o", "under-trained": "^", "over-trained": "v", "unknown": "x"}
ESD_COLOR = "#1f77b4"
FARMS_COLOR = "#9467bd"
NAMED_TICKS_MAX = 80  # above this many layers the overview draws a block x layer-kind grid (or labels blocks)
OVERVIEW_MAX_WIDTH = 16.0  # inches: wider figures are cut at a window's edge or shrunk past reading
GRID_KINDS_MAX = 24  # more layer kinds per block than this (MoE experts) do not make a readable grid
GRID_CELL_TEXT_MIN = 0.3  # inches of cell width below which grid cells carry no alpha text
LEGEND_WRAP = 30  # characters per line of a legend's "not drawn" note
ALPHA_LOG_SPREAD = 4.0  # an alpha curve whose top is this many times its median gets a log axis
TICK_LABEL_MAX = 48  # longer layer names are cut in the middle on the overview's axis
MAX_STEM = 200  # file names stay well under the usual 255-byte limit
# Eigenvalues below this fraction of lambda_max are round-off of a rank-deficient
# matrix (float32 Gram: ~1e-7 relative), not spectrum: axes start above them.
RELATIVE_FLOOR = 1e-6
DIAGNOSTIC_CANDIDATES = 1000  # xmin candidates drawn per layer (all of them below this)
SVG_HASH_SALT = "htsr"
FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".json", ".gguf")  # fixed ids in SVG output: same report, same bytes


def checkpoint_name(checkpoint: str) -> str:
    """A checkpoint as a title names it: a path's last component, a hub id whole.

    `/data/runs/llama/model.safetensors` -> `model.safetensors`;
    `sentence-transformers/all-MiniLM-L6-v2` -> itself (an id has exactly one `/`,
    does not start with `/`, `.` or `~`, has no checkpoint file suffix and is no local path).
    """
    text = checkpoint.rstrip("/\\") or checkpoint
    looks_like_hub_id = (
        text.count("/") == 1
        and not text.startswith(("/", ".", "~"))
        and not text.endswith(FILE_SUFFIXES)
        and not os.path.exists(text)
    )
    return readable(text if looks_like_hub_id else (os.path.basename(text) or text))


# ---------------------------------------------------------------- rendering


def figure_bytes(figure: Figure, fmt: str = "png", dpi: int = DEFAULT_DPI) -> bytes:
    """Render a figure without timestamps or version strings (same figure, same bytes)."""
    if fmt not in FORMATS:
        raise HtsrError(f"plot format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    metadata = {
        "png": {"Software": None},
        "svg": {"Date": None, "Creator": None},
        "pdf": {"CreationDate": None, "Creator": None, "Producer": None},
    }[fmt]
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASH_SALT, "svg.fonttype": "path"}):
        figure.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
    return buffer.getvalue()


@dataclass
class GlyphReport:
    """Characters the plot font lacks (hostile or exotic layer names), gathered instead of warned one by one."""

    missing: set[str]


@contextmanager
def missing_glyphs() -> Iterator[GlyphReport]:
    """Collect matplotlib's "Glyph ... missing from font" warnings; other warnings pass through."""
    found = GlyphReport(set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield found
    for warning in caught:
        match = re.match(r"Glyph (\d+) ", str(warning.message))
        if match:
            found.missing.add(chr(int(match.group(1))))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


# ---------------------------------------------------------------- file names


def plot_file_names(names: Iterable[str], fmt: str = "png") -> dict[str, str]:
    """A filesystem-safe file name per layer, distinct even on case-insensitive disks, never the overview's.

    The layer's ESD is DIR/<file>, its fit diagnostics DIR/fit/<file>.
    """
    taken = {f"{OVERVIEW_STEM}.{fmt}"}
    files: dict[str, str] = {}
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:MAX_STEM] or "layer"
        file, suffix = f"{stem}.{fmt}", 2
        while file.lower() in taken:
            file, suffix = f"{stem}-{suffix}.{fmt}", suffix + 1
        taken.add(file.lower())
        files[name] = file
    return files


# ---------------------------------------------------------------- ESD figures


@dataclass(frozen=True)
class Drawable:
    """The part of a spectrum a log axis can show, and what was left out."""

    values: np.ndarray  # positive, finite, at or above the floor; ascending
    total: int  # eigenvalues in the spectrum, the density's denominator
    zeros: int  # exactly zero, or below the round-off floor
    negative: int
    not_finite: int

    def left_out(self) -> str | None:
        parts = []
        if self.not_finite:
            parts.append(f"{self.not_finite} not finite")
        if self.negative:
            parts.append(f"{self.negative} negative")
        if self.zeros:
            parts.append(f"{self.zeros} zero or < {RELATIVE_FLOOR:g} x lambda_max")
        return f"not drawn: {', '.join(parts)} of {self.total}" if parts else None


def drawable(values: np.ndarray) -> Drawable:
    """Split a spectrum into what a log axis can show and counts of the rest."""
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    floor = float(positive.max()) * RELATIVE_FLOOR if positive.size else 0.0
    shown = np.sort(positive[positive >= floor])
    return Drawable(
        values=shown,
        total=values.size,
        zeros=int(positive.size - shown.size + np.count_nonzero(finite == 0)),
        negative=int(np.count_nonzero(finite < 0)),
        not_finite=int(values.size - finite.size),
    )


def power_law_density(x: np.ndarray, alpha: float, xmin: float, tail_fraction: float) -> np.ndarray:
    """The fitted Pareto tail as a density over the whole spectrum.

    p(x) = (alpha - 1) / xmin * (x / xmin)^-alpha integrates to 1 over [xmin, inf);
    scaling by the tail's share n / N of the eigenvalues puts it on the histogram's scale.
    """
    return tail_fraction * (alpha - 1.0) / xmin * (x / xmin) ** (-alpha)


def log_histogram(values: np.ndarray, total: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(density, edges) on log-spaced bins over the positive values; None when there are none.

    The density is per eigenvalue of the whole spectrum (`total`, default all of
    `values`), so the bars above xmin hold the same mass n / N as the fitted tail.
    """
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return None
    low, high = float(positive.min()), float(positive.max())
    if low == high:
        low, high = low / 1.1, high * 1.1
    bins = int(np.clip(np.sqrt(positive.size), 10, 100))
    edges = np.geomspace(low, high, bins + 1)
    counts, _ = np.histogram(positive, edges)
    return counts / ((total or values.size) * np.diff(edges)), edges


def _fit_ok(alpha: float | None, xmin: float | None) -> bool:
    return alpha is not None and xmin is not None and np.isfinite(alpha) and np.isfinite(xmin) and xmin > 0


def _draw_spectrum(
    axes, spectrum: Drawable, alpha: float | None, xmin: float | None,
    tail_fraction: float, color: str, label: str, filled: bool,
) -> bool:
    """One spectrum's histogram, its fitted tail (dashed) and its xmin (dotted); False if nothing to draw."""
    histogram = log_histogram(spectrum.values, spectrum.total)
    if histogram is None:
        return False
    density, edges = histogram
    axes.stairs(density, edges, color=color, alpha=0.35 if filled else 0.9, fill=filled,
                label=f"{label} ({spectrum.total} eigenvalues)")
    if _fit_ok(alpha, xmin) and xmin <= float(spectrum.values[-1]):
        x = np.geomspace(xmin, float(spectrum.values[-1]), 200)
        axes.plot(x, power_law_density(x, alpha, xmin, tail_fraction), "--", color=color, linewidth=2,
                  label=f"{label} fit: alpha {alpha:.3f}")
        axes.axvline(xmin, color=color, linestyle=":", linewidth=1.5, label=f"{label} xmin {xmin:.4g}")
    return True


def _nothing_to_draw(axes, spectrum: Drawable) -> None:
    axes.text(0.5, 0.5, f"nothing to draw on a log axis\n{spectrum.left_out()}", ha="center", va="center",
              transform=axes.transAxes, fontsize=9, color="0.3")
    axes.set_xticks([])
    axes.set_yticks([])


def _fit_line(layer: LayerResult, eigenvalues: int) -> str:
    if layer.alpha is None:
        return f"no fit: {layer.reason or layer.status}"
    fit = f"alpha {layer.alpha:.3f}"
    if layer.ks_distance is not None:
        fit += f"   D {layer.ks_distance:.3f}"
    if layer.tail_size is not None:
        fit += f"   tail {layer.tail_size}/{eigenvalues}"
    if layer.alpha_farms is not None:
        fit += f"   alpha_farms {layer.alpha_farms:.3f}"
    return fit


def _legend_outside(axes, extra: str | None) -> None:
    """The legend right of the axes (never over the bars), with what was not drawn under it."""
    handles, labels = axes.get_legend_handles_labels()
    if extra:  # wrapped: one long line would run off the figure's right edge
        handles.append(Line2D([], [], linestyle=""))
        labels.append("\n".join(textwrap.wrap(extra, LEGEND_WRAP)))
    if handles:
        axes.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _short_log_ticks(low: float, high: float) -> list[float]:
    """A few round values strictly inside (low, high), for a log axis that holds no two powers of ten.

    Round mantissas (0.3, 0.4, 0.5) when at least three fit, else four values
    evenly spaced on the log scale at two significant digits.
    """
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    round_values = [
        mantissa * 10.0**exponent
        for exponent in range(first, last + 1)
        for mantissa in (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
        if low < mantissa * 10.0**exponent < high
    ]
    if len(round_values) >= 3:
        return round_values[:: math.ceil(len(round_values) / 6)]
    spaced = {float(f"{value:.2g}") for value in np.geomspace(low, high, 6)[1:-1]}
    return sorted(value for value in spaced if low < value < high)


def _label_short_log_axes(axes) -> None:
    """Label a log axis that spans too little to hold two powers of ten (no labelled tick otherwise).

    A 27-eigenvalue conv spectrum from 0.24 to 0.78 has no power of ten in view,
    so matplotlib labels nothing and xmin cannot be read off the axis.
    """
    for axis, limits in ((axes.xaxis, axes.get_xlim()), (axes.yaxis, axes.get_ylim())):
        if axis.get_scale() != "log":
            continue
        low, high = sorted(limits)
        if not (low > 0 and math.isfinite(high)):
            continue
        decades = [tick for tick in LogLocator().tick_values(low, high) if low <= tick <= high]
        if len(decades) >= 2:
            continue
        axis.set_major_locator(FixedLocator(_short_log_ticks(low, high)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
        axis.set_minor_locator(NullLocator())


def _draw_log_esd(axes, layer: LayerResult, spectra: LayerSpectra) -> None:
    """The log-log ESD with its fit and the FARMS pool over it; notes what could not be drawn."""
    esd = drawable(spectra.esd.double().numpy())
    tail_fraction = (layer.tail_size or 0) / max(esd.total, 1)
    if not _draw_spectrum(axes, esd, layer.alpha, layer.xmin, tail_fraction, ESD_COLOR, "ESD", filled=True):
        _nothing_to_draw(axes, esd)
        return
    low = float(esd.values[0])
    # One FARMS window covering the whole matrix pools exactly the ESD: nothing to overlay.
    farms_differs = spectra.farms is not None and not torch.equal(spectra.farms, spectra.esd)
    if farms_differs and _fit_ok(layer.alpha_farms, layer.xmin_farms):
        pool = drawable(spectra.farms.double().numpy())
        if pool.values.size:
            # conv layers average alpha and xmin over divisions: the line shows that averaged fit
            farms_tail = float(np.count_nonzero(pool.values >= layer.xmin_farms)) / max(pool.total, 1)
            _draw_spectrum(axes, pool, layer.alpha_farms, layer.xmin_farms, farms_tail, FARMS_COLOR, "FARMS", filled=False)
            low = min(low, float(pool.values[0]))
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low / 1.2, None)  # from the smallest eigenvalue above the round-off floor
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(r"eigenvalue $\lambda$ of $W^T W$")
    axes.set_ylabel("density")
    _label_short_log_axes(axes)
    _legend_outside(axes, esd.left_out())


def esd_figure(layer: LayerResult, spectra: LayerSpectra, checkpoint: str | None = None) -> Figure:
    """Log-log density of one layer's ESD with its power-law fit (and FARMS's, when present)."""
    # Fixed margins and unlabelled minor ticks: layout engines and minor-label
    # text measuring cost several times the drawing, and a big model has hundreds of these.
    figure = Figure(figsize=(8.6, 4.4))
    figure.subplots_adjust(left=0.09, right=0.70, bottom=0.12, top=0.86)
    axes = figure.add_subplot()
    _draw_log_esd(axes, layer, spectra)
    where = f"{checkpoint_name(checkpoint)}: " if checkpoint else ""
    # An explicit y skips matplotlib's title placement, which measures every top tick label.
    axes.set_title(f"{where}{layer.name}\n{_fit_line(layer, spectra.esd.numel())}", fontsize=9, parse_math=False, y=1.02)
    return figure


# ---------------------------------------------------------------- fit diagnostics


@dataclass(frozen=True)
class XminScan:
    """alpha and KS distance D for each xmin candidate (algorithms.md section 3)."""

    xmins: np.ndarray
    alphas: np.ndarray
    distances: np.ndarray  # 1 where alpha <= 1 (an invalid candidate)


def xmin_scan(esd: torch.Tensor, method: str) -> XminScan:
    """Score the xmin candidates the fit chose among: every one up to DIAGNOSTIC_CANDIDATES, a grid above.

    `ks` first drops eigenvalues <= 1e-5 as its fit does; the other rules keep
    every positive eigenvalue. Only positive finite eigenvalues can start a tail.
    """
    x = esd.double().cpu()
    x = x[torch.isfinite(x) & (x > (KS_MIN_EIGENVALUE if method == "ks" else 0.0))]
    x, _ = torch.sort(x)
    if x.numel() < 2:
        return XminScan(np.empty(0), np.empty(0), np.empty(0))
    if x.numel() - 1 <= DIAGNOSTIC_CANDIDATES:
        starts = torch.arange(0, x.numel() - 1)
    else:
        starts = torch.as_tensor(candidate_grid(x.numel(), DIAGNOSTIC_CANDIDATES))
    alphas = hill_alphas(x, starts)
    distances = ks_distances(x, starts, alphas)
    return XminScan(x[starts].numpy(), alphas.numpy(), distances.numpy())


def fit_diagnostics_figure(
    layer: LayerResult, spectra: LayerSpectra, xmin_method: str = "ks", checkpoint: str | None = None
) -> Figure:
    """Can this fit be trusted? D and alpha against the xmin candidate (chosen xmin marked),
    beside the log-log ESD and the ESD on linear axes."""
    figure = Figure(figsize=(15.0, 4.4))
    figure.subplots_adjust(left=0.05, right=0.86, bottom=0.13, top=0.82, wspace=0.42)
    scan_axes, log_axes, linear_axes = figure.subplots(1, 3)

    scan = xmin_scan(spectra.esd, xmin_method)
    valid = scan.distances < 1.0
    if valid.any():
        scan_axes.plot(scan.xmins[valid], scan.distances[valid], color=ESD_COLOR, linewidth=1.2, label="KS distance D")
        scan_axes.set_xscale("log")
        scan_axes.xaxis.set_minor_locator(NullLocator())  # minor ticks cost more than they tell here
        scan_axes.set_ylabel("D", color=ESD_COLOR)
        alpha_axes = scan_axes.twinx()
        alpha_axes.plot(scan.xmins[valid], scan.alphas[valid], color="#d62728", linewidth=1.2, label="alpha")
        alpha_axes.set_ylabel("alpha", color="#d62728")
        # The whole curve stays in view: its swings past the chosen xmin are what tells an
        # unstable fit. A curve that shoots up at the last candidates gets a log axis instead
        # of a top that flattens everything else.
        shown = scan.alphas[valid]
        top = max(float(shown.max()), layer.alpha or 0.0)
        if top > ALPHA_LOG_SPREAD * float(np.median(shown)):
            alpha_axes.set_yscale("log")
            alpha_axes.set_ylim(1.0, top * 1.15)
            _label_short_log_axes(alpha_axes)
        else:
            alpha_axes.set_ylim(1.0, top + 0.08 * (top - 1.0) + 0.05)
        if _fit_ok(layer.alpha, layer.xmin):
            scan_axes.axvline(layer.xmin, color="0.2", linestyle=":", linewidth=1.5)
            scan_axes.plot([layer.xmin], [layer.ks_distance], marker="o", color=ESD_COLOR, zorder=4)
            alpha_axes.plot([layer.xmin], [layer.alpha], marker="o", color="#d62728", zorder=4)
        scan_axes.set_xlabel(f"xmin candidate ({xmin_method} chose the dotted line)")
        _label_short_log_axes(scan_axes)
    else:
        scan_axes.text(0.5, 0.5, "no valid xmin candidate\n(every alpha <= 1, or < 2 eigenvalues)",
                       ha="center", va="center", transform=scan_axes.transAxes, fontsize=9, color="0.3")
        scan_axes.set_xticks([])
        scan_axes.set_yticks([])
    scan_axes.set_title("D and alpha per xmin candidate", fontsize=9, y=1.02)

    _draw_log_esd(log_axes, layer, spectra)
    if log_axes.get_legend() is not None:
        log_axes.get_legend().remove()  # the linear panel's legend names the same lines
    log_axes.set_title("ESD, log-log", fontsize=9, y=1.02)

    esd = drawable(spectra.esd.double().numpy())
    if esd.values.size:
        bins = int(np.clip(np.sqrt(esd.values.size), 10, 100))
        linear_axes.hist(esd.values, bins=bins, color=ESD_COLOR, alpha=0.5, label=f"ESD ({esd.total} eigenvalues)")
        if _fit_ok(layer.alpha, layer.xmin):
            linear_axes.axvline(layer.xmin, color=ESD_COLOR, linestyle=":", linewidth=1.5,
                                label=f"xmin {layer.xmin:.4g}, alpha {layer.alpha:.3f}")
        linear_axes.set_xlabel(r"eigenvalue $\lambda$")
        linear_axes.set_ylabel("count")
    else:
        _nothing_to_draw(linear_axes, esd)
    linear_axes.set_title("ESD, linear", fontsize=9, y=1.02)
    _legend_outside(linear_axes, esd.left_out())

    where = f"{checkpoint_name(checkpoint)}: " if checkpoint else ""
    figure.suptitle(f"{where}{layer.name}\n{_fit_line(layer, spectra.esd.numel())}", fontsize=10, parse_math=False)
    return figure


# ---------------------------------------------------------------- overview


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
    centres = [((first + last) / 2, shorten_middle(block, TICK_LABEL_MAX)) for block, first, last in runs if block is not None]
    if len(layers) <= NAMED_TICKS_MAX:
        names = [shorten_middle(layer.name, TICK_LABEL_MAX) for layer in layers]
        axes.set_xticks(range(len(layers)), names, rotation=90, fontsize=7, parse_math=False)
        top = axes.secondary_xaxis("top")
        top.set_xticks([x for x, _ in centres], [block for _, block in centres], fontsize=7, parse_math=False)
        top.tick_params(length=0)
    else:
        ticks = [((first + last) / 2, shorten_middle(block or layers[first].name, TICK_LABEL_MAX)) for block, first, last in runs]
        every = max(1, math.ceil(len(ticks) / NAMED_TICKS_MAX))  # the width is capped: label every n-th run
        ticks = ticks[::every]
        axes.set_xticks([x for x, _ in ticks], [label for _, label in ticks], rotation=90, fontsize=7, parse_math=False)


# The overview's point series: gid prefix, report field, filled markers.
OVERVIEW_SERIES = (("alpha", "alpha", True), ("alpha-farms", "alpha_farms", False))
FAILED_GID = "alpha-unknown"


def overview_layers(report: Report) -> list[LayerResult]:
    """The layers the overview places on its x axis: every analyzed one, in model order."""
    return [layer for layer in report.layers if layer.analysed]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _xmin_rule(report: Report) -> str:
    """The xmin rule whose quality band applies; "ks" for a report (built in Python) naming no known rule."""
    xmin = report.settings.get("xmin", "ks")
    return xmin if xmin in QUALITY_BANDS else "ks"


def overview_points(report: Report) -> list[tuple[str, str, list[int]]]:
    """(gid, field, positions) of each scatter collection of the overview, positions indexing
    `overview_layers(report)` in the order the points are drawn. A gid is the series and the
    quality class (`alpha-ok`, `alpha-farms-under-trained`) under the report's xmin rule;
    failed fits are `alpha-unknown`. The block grid draws the alpha series only."""
    layers = overview_layers(report)
    xmin = _xmin_rule(report)
    series = OVERVIEW_SERIES if report.has_farms and block_grid(layers) is None else OVERVIEW_SERIES[:1]
    points = [
        (f"{gid}-{quality}", field,
         [i for i, layer in enumerate(layers) if _finite(layer.metric(field)) and quality_of(layer.metric(field), xmin) == quality])
        for gid, field, _ in series
        for quality in QUALITY_CLASSES[:3]
    ]
    points.append((FAILED_GID, "alpha", [i for i, layer in enumerate(layers) if not _finite(layer.alpha)]))
    return [(gid, field, positions) for gid, field, positions in points if positions]


@dataclass(frozen=True)
class BlockGrid:
    """Where each overview layer sits in a block x layer-kind grid (many layers, repeated blocks)."""

    columns: list[str]  # one per block (its index when the names are PREFIX + number), then one per layer outside blocks
    rows: list[str]  # the layer kinds: a name with its block removed (`attention.self.query`), then "outside blocks"
    cells: list[tuple[int, int]]  # (column, row) of each overview layer, in layer order
    block_axis: str  # the x axis label: "block (encoder.layer.N)"


OUTSIDE_BLOCKS = "outside blocks"
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def _kind(layer: LayerResult) -> str:
    if layer.block and layer.name.startswith(layer.block + "."):
        return layer.name[len(layer.block) + 1:]
    return layer.name


def block_grid(layers: list[LayerResult]) -> BlockGrid | None:
    """The grid the overview draws above NAMED_TICKS_MAX layers; None when the layers are fewer, fall
    into fewer than two blocks, or have more kinds than a grid can show (GRID_KINDS_MAX)."""
    if len(layers) <= NAMED_TICKS_MAX:
        return None
    runs = _block_runs(layers)
    blocks = [block for block, _, _ in runs if block is not None]
    kinds: dict[str, int] = {}
    for layer in layers:
        if layer.block is not None:
            kinds.setdefault(_kind(layer), len(kinds))
    if len(blocks) < 2 or len(kinds) > GRID_KINDS_MAX:
        return None
    numbered = [_NUMBERED.match(block) for block in blocks]
    prefixes = {match.group(1) for match in numbered if match}
    short = all(numbered) and len(prefixes) == 1
    rows = list(kinds) + ([OUTSIDE_BLOCKS] if any(layer.block is None for layer in layers) else [])
    columns: list[str] = []
    cells: list[tuple[int, int]] = []
    for block, first, last in runs:
        if block is None:
            columns.append(shorten_middle(layers[first].name, TICK_LABEL_MAX))
        else:
            columns.append(_NUMBERED.match(block).group(2) if short else shorten_middle(block, TICK_LABEL_MAX))
        for index in range(first, last + 1):
            row = kinds[_kind(layers[index])] if block is not None else len(kinds)
            cells.append((len(columns) - 1, row))
    block_axis = f"block ({prefixes.pop()}N)" if short else "block"
    return BlockGrid(columns, rows, cells, block_axis)


def _band_handle(report: Report) -> Line2D:
    low, high = QUALITY_BANDS[_xmin_rule(report)]
    return Line2D([], [], color="0.4", linestyle="--", label=f"alpha = {low:g} and {high:g}\n(quality band, xmin {_xmin_rule(report)})")


def _quality_handles(marker: str | None = None) -> list[Line2D]:
    return [
        Line2D([], [], marker=marker or QUALITY_MARKERS[quality], linestyle="", color=QUALITY_COLORS[quality], label=quality)
        for quality in QUALITY_CLASSES if quality != "unknown"
    ]


TITLE_NAME_MAX = 60  # characters of the checkpoint's name in an overview title (the narrowest axes hold about 70)


def _overview_title(report: Report, counts: str) -> str:
    name = shorten_middle(checkpoint_name(report.checkpoint), TITLE_NAME_MAX)
    return f"{name}\npower-law alpha per layer ({counts})"


def _grid_figure(report: Report, layers: list[LayerResult], grid: BlockGrid) -> Figure:
    """alpha of every layer as a cell of the block x kind grid: quality by colour, alpha as text.

    The figure's size depends on the blocks and kinds, not on the layer count, and
    stays under OVERVIEW_MAX_WIDTH; each cell is one square marker of the same
    gid'd scatter collections as the point chart, so the HTML report's hover text
    and click-to-open work on it unchanged.
    """
    columns, rows = len(grid.columns), len(grid.rows)
    width = float(np.clip(3.6 + 0.34 * columns, 8.0, OVERVIEW_MAX_WIDTH))
    height = float(np.clip(2.4 + 0.32 * rows, 4.0, 9.0))
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.add_subplot()
    cell_inches = min((width - 3.6) / columns, (height - 2.0) / rows)  # the axes' share, about
    side = cell_inches * 72 * 0.86  # points: a gap between neighbours
    with_text = cell_inches >= GRID_CELL_TEXT_MIN
    for gid, field, positions in overview_points(report):
        quality = next(q for q in QUALITY_CLASSES if gid.endswith(q))
        xs = [grid.cells[i][0] for i in positions]
        ys = [grid.cells[i][1] for i in positions]
        axes.scatter(xs, ys, marker="s", s=side**2, c=QUALITY_COLORS[quality], alpha=0.55 if gid != FAILED_GID else 0.3,
                     linewidths=0, zorder=2, gid=gid)
        if with_text:
            for i, x, y in zip(positions, xs, ys):
                value = layers[i].metric(field)
                text = "x" if gid == FAILED_GID else (f"{value:.1f}" if value < 100 else f"{value:.0f}")
                axes.text(x, y, text, ha="center", va="center", fontsize=6, zorder=3)
    axes.set_xlim(-0.5, columns - 0.5)
    axes.set_ylim(rows - 0.5, -0.5)
    axes.set_xticks(range(columns), grid.columns, fontsize=7, parse_math=False)
    for label, name in zip(axes.get_xticklabels(), grid.columns):
        if not name.isdigit():
            label.set_rotation(90)
    axes.set_yticks(range(rows), [shorten_middle(kind, TICK_LABEL_MAX) for kind in grid.rows], fontsize=7, parse_math=False)
    axes.tick_params(length=0)
    for side_name in ("top", "right"):
        axes.spines[side_name].set_visible(False)
    axes.set_xlabel(grid.block_axis, parse_math=False)
    failed = [Line2D([], [], marker="s", linestyle="", color=QUALITY_COLORS["unknown"], label="fit failed")]
    low, high = QUALITY_BANDS[_xmin_rule(report)]
    band = Line2D([], [], linestyle="", label=f"ok: alpha in [{low:g}, {high:g}]\n(quality band, xmin {_xmin_rule(report)})")
    axes.legend(handles=[*_quality_handles("s"), *failed, band], fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    farms = "; alpha_farms in the layer table" if report.has_farms else ""
    axes.set_title(_overview_title(report, f"{len(layers)} analyzed{farms}"), parse_math=False)
    return figure


def overview_figure(report: Report) -> Figure:
    """alpha (and alpha_farms) per analyzed layer in model order; quality by colour and marker shape; blocks shaded.

    Each quality class is one scatter collection with gid `alpha-<quality>` (or
    `alpha-farms-<quality>`), points in layer order, so the HTML report can
    attach hover text to every point. Above NAMED_TICKS_MAX layers in repeated
    blocks the layers are a block x layer-kind grid instead (`block_grid`).
    """
    layers = overview_layers(report)
    grid = block_grid(layers)
    if grid is not None:
        return _grid_figure(report, layers, grid)
    count = max(len(layers), 1)
    inches_per_layer = 0.22 if count <= NAMED_TICKS_MAX else 0.12
    figure = Figure(figsize=(float(np.clip(3.5 + inches_per_layer * count, 9.5, OVERVIEW_MAX_WIDTH)), 5.5), layout="constrained")
    axes = figure.add_subplot()
    runs = _block_runs(layers)
    for shade, (_, first, last) in enumerate(run for run in runs if run[0] is not None):
        if shade % 2 == 0:
            axes.axvspan(first - 0.5, last + 0.5, color="0.93", zorder=0)
    band = QUALITY_BANDS[_xmin_rule(report)]
    axes.axhspan(*band, color=QUALITY_COLORS["ok"], alpha=0.06, zorder=0)
    for threshold in band:
        axes.axhline(threshold, color="0.4", linestyle="--", linewidth=1, zorder=1)
    values = [v for layer in layers for v in (layer.alpha, layer.alpha_farms) if _finite(v)]
    bottom, top = min([band[0] - 1.0, *values]) - 0.2, max([band[1] + 1.0, *values]) * 1.05
    handles = _quality_handles()
    filled = {f"{gid}-{quality}": fill for gid, _, fill in OVERVIEW_SERIES for quality in QUALITY_CLASSES}
    for gid, field, positions in overview_points(report):
        quality = next(q for q in QUALITY_CLASSES if gid.endswith(q))
        color = QUALITY_COLORS[quality]
        if gid == FAILED_GID:  # a failed fit has no alpha, but its place in the model should still show
            axes.scatter(positions, [bottom + 0.03 * (top - bottom)] * len(positions), marker=QUALITY_MARKERS["unknown"],
                         color=color, zorder=3, gid=gid)
            handles.append(Line2D([], [], marker="x", linestyle="", color=color, label="fit failed"))
            continue
        axes.scatter(
            positions, [layers[i].metric(field) for i in positions], marker=QUALITY_MARKERS[quality],
            s=34 if filled[gid] else 30, zorder=3, c=color if filled[gid] else "none", edgecolors=color,
            linewidths=1.2, gid=gid,
        )
    if report.has_farms:
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="0.3",
                              label="alpha_farms (hollow)"))
    handles.append(_band_handle(report))
    _label_layers(axes, layers, runs)
    axes.set_xlim(-0.5, count - 0.5)
    axes.set_ylim(bottom, top)
    axes.set_ylabel("alpha")
    axes.set_title(_overview_title(report, f"{len(layers)} analyzed"), parse_math=False)
    axes.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


# ---------------------------------------------------------------- files


def write_plots(
    report: Report, directory: str | Path, fmt: str = "png", dpi: int = DEFAULT_DPI,
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Write overview.<fmt>, one ESD per analyzed layer into `directory` and one
    fit-diagnostics figure per layer into `directory/fit/` (created if missing).

    Everything is drawn into a staged directory beside it and moved in at the
    end (`staged_directory`): an error or a stop leaves `directory` as it was.
    """
    if fmt not in FORMATS:
        raise HtsrError(f"plot format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    directory = Path(directory)
    if os.path.lexists(directory) and not directory.is_dir():
        raise HtsrError(f"{directory}: exists and is not a directory (plots need a directory)")
    analysed = overview_layers(report)
    files = plot_file_names((layer.name for layer in analysed), fmt)
    method = report.settings.get("xmin", "ks")
    names = [f"{OVERVIEW_STEM}.{fmt}"]
    # Drawn into a directory beside it and moved in at the end: a stopped run leaves no half.
    with staged_directory(directory) as staging:
        (staging / FIT_DIRECTORY).mkdir()
        write_atomic(staging / names[0], figure_bytes(overview_figure(report), fmt, dpi))
        for done, layer in enumerate(analysed):
            if progress is not None:
                progress(done, len(analysed), layer.name)
            spectra = report.spectra_of(layer)
            esd, fit = files[layer.name], f"{FIT_DIRECTORY}/{files[layer.name]}"
            write_atomic(staging / esd, figure_bytes(esd_figure(layer, spectra, report.checkpoint), fmt, dpi))
            write_atomic(staging / fit, figure_bytes(fit_diagnostics_figure(layer, spectra, method, report.checkpoint), fmt, dpi))
            names += [esd, fit]
        if progress is not None:
            progress(len(analysed), len(analysed), "")
    return [directory / name for name in names]
