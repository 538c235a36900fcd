"""The picture of a run (`htsr track --plot`): summary metrics on top, then alpha per
layer (or block) against step as a heatmap and as lines.

Built from plain numbers (steps, unit names, an alpha grid), drawn with the
conventions of plots.py: a `Figure` rendered by Agg, no pyplot, no metadata
(`figure_bytes`), names cut in the middle, the quality band [2, 6] marked.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from htsr_cli.render.plots import QUALITY_COLORS, TICK_LABEL_MAX
from htsr_cli.settings import QUALITY_BANDS
from htsr_cli.render.terminal import shorten_middle

# Above this many layers the rows of the picture are blocks (their mean alpha).
LAYER_ROWS_MAX = 32
# Lines drawn in the bottom panel at most: more would be a blur, the heatmap shows them all.
LINES_MAX = 12


def _as_array(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[math.nan if value is None else value for value in row] for row in rows], dtype=float)


def _limit_to_data(axes, values: np.ndarray) -> None:
    """The y range of the data (padded), not of the quality band: a LoRA update's alphas sit far below 2."""
    finite = values[np.isfinite(values)] if values.size else values
    if finite.size:
        low, high = float(finite.min()), float(finite.max())
        pad = max(0.05 * (high - low), 0.1)
        axes.set_ylim(low - pad, high + pad)


def track_figure(
    title: str,
    steps: list[int],
    units: list[str],
    alphas: list[list[float | None]],
    summary: dict[str, list[float | None]],
    unit_kind: str = "layer",
    band: tuple[float, float] = QUALITY_BANDS["ks"],
) -> Figure:
    """`alphas[u][c]`: alpha of unit `u` (a layer or a block) at checkpoint `c`; `summary[name][c]` likewise
    (summaries on alpha's scale: the top panel shares the quality band `band`, the xmin rule's)."""
    grid = _as_array(alphas) if alphas else np.zeros((0, len(steps)))
    height = 7.0 + min(len(units), 80) * 0.14
    figure = Figure(figsize=(11.0, height), layout="constrained")
    top, heat, lines = figure.subplots(3, 1, height_ratios=[1.0, max(1.2, len(units) * 0.14), 1.3])
    x = np.array(steps, dtype=float)

    for name, values in summary.items():
        top.plot(x, _as_array([values])[0], marker="o", markersize=3, label=name)
    top.axhspan(*band, color=QUALITY_COLORS["ok"], alpha=0.06, zorder=0)
    _limit_to_data(top, _as_array(list(summary.values())) if summary else np.zeros((0, 0)))
    top.set_ylabel("summary")
    top.set_title(title, parse_math=False)
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    if grid.size and np.isfinite(grid).any():
        image = heat.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                            extent=(-0.5, len(steps) - 0.5, len(units) - 0.5, -0.5))
        figure.colorbar(image, ax=heat, label="alpha", pad=0.01)
    else:
        heat.text(0.5, 0.5, "no layer has an alpha", ha="center", va="center", transform=heat.transAxes)
    heat.set_yticks(range(len(units)))
    heat.set_yticklabels([shorten_middle(unit, TICK_LABEL_MAX) for unit in units], fontsize=7)
    every = max(1, len(steps) // 12)
    heat.set_xticks(range(0, len(steps), every))
    heat.set_xticklabels([str(step) for step in steps[::every]], fontsize=7)
    heat.set_xlabel("checkpoint (step)")
    heat.set_ylabel(unit_kind)

    drawn = [index for index in range(len(units)) if np.isfinite(grid[index]).any()]
    picks = np.linspace(0, len(drawn) - 1, min(LINES_MAX, len(drawn))).round().astype(int) if drawn else []
    for index in dict.fromkeys(drawn[int(i)] for i in picks):
        lines.plot(x, grid[index], marker=".", linewidth=1, label=shorten_middle(units[index], 40))
    for threshold in band:
        lines.axhline(threshold, color="0.4", linestyle="--", linewidth=1)
    _limit_to_data(lines, grid)
    lines.set_xlabel("step")
    lines.set_ylabel("alpha")
    note = "" if len(drawn) <= LINES_MAX else f" ({LINES_MAX} of {len(drawn)} with a value, evenly spaced)"
    lines.set_title(f"alpha per {unit_kind}{note}", fontsize=9, parse_math=False)
    lines.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure
