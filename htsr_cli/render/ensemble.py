"""The sharpness-diversity picture of an ensemble (`htsr ensemble --plot`), as SharpBalance draws
the trade-off: one point per member, its adaptive sharpness against its mean disagreement with the
other members; the ensemble's accuracy and mean diversity in the title. A `Figure` rendered by Agg
with the conventions of plots.py (no pyplot; `figure_bytes` writes it without metadata)."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from htsr_cli.render.plots import TICK_LABEL_MAX
from htsr_cli.render.terminal import shorten_middle


def sharpness_diversity_figure(document: dict[str, Any]) -> Figure:
    """One point per member of an `htsr.ensemble/1` document."""
    members = document["members"]
    figure = Figure(figsize=(6.4, 4.8))
    axes = figure.subplots()
    sharpness = [member["sharpness"] for member in members]
    disagreement = [100.0 * member["disagreement"] for member in members]
    axes.scatter(sharpness, disagreement, s=48, color="tab:blue", zorder=3)
    for member, x, y in zip(members, sharpness, disagreement):
        axes.annotate(shorten_middle(member["model"], TICK_LABEL_MAX), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ensemble, diversity = document["ensemble"], document["diversity"]
    axes.set_xlabel(f"adaptive sharpness (rho {document['settings']['sharpness']['rho']:g}, l{document['settings']['sharpness']['norm']})")
    axes.set_ylabel("disagreement with the other members (%)")
    axes.set_title(
        f"{len(members)} members: ensemble accuracy {ensemble['accuracy']:.2f}% "
        f"(members {ensemble['mean_member_accuracy']:.2f}%)\n"
        f"disagreement {100.0 * diversity['disagreement']:.2f}%, KL {diversity['kl']:.4f}",
        fontsize=10,
    )
    axes.grid(True, alpha=0.3)
    axes.margins(0.2)
    figure.tight_layout()
    return figure
