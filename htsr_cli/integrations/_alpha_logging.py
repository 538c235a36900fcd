"""Per-layer alpha and the summary metrics as flat scalars for a trainer's logger.

The analysis is `htsr analyze` on the live module (the streamed solver, one
matrix batch at a time), so a logged value equals what `htsr analyze` reports
for the checkpoint saved at the same step with the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from htsr_cli.engine.pipeline import analyze
from htsr_cli.integrations._balancing import Every, computed_on_rank_zero
from htsr_cli.results.report import Report
from htsr_cli.settings import AnalyzeSettings, FarmsSettings

PREFIX = "htsr"
# summary entries logged as `htsr/<name>` (the FARMS ones only with farms)
SUMMARY_METRICS = (
    "mean_alpha", "median_alpha", "weighted_alpha", "mean_alpha_weighted",
    "mean_alpha_farms", "median_alpha_farms", "weighted_alpha_farms",
)


@dataclass(frozen=True)
class AlphaLogSettings:
    """What an AlphaLogger analyses and how often."""

    every_n_steps: int = 100
    layers: str | None = None  # regex on module name or tensor key, as `htsr analyze --layers`
    farms: bool = False
    xmin: str = "ks"  # `htsr analyze`'s default, so the logged alphas equal its report

    def __post_init__(self) -> None:
        Every(steps=self.every_n_steps)  # checks the count
        self.analysis(torch.device("cpu"))  # checks xmin and the regex's type

    def analysis(self, device: torch.device) -> AnalyzeSettings:
        return AnalyzeSettings(
            xmin=self.xmin, layers=self.layers, farms=FarmsSettings() if self.farms else None, device=device.type
        )

    def due(self, step: int) -> bool:
        return Every(steps=self.every_n_steps).at_step(step)


def alpha_metrics(report: Report) -> dict[str, float]:
    """`htsr/alpha/<layer>` (and `htsr/alpha_farms/<layer>`) per fitted layer, then the summary."""
    metrics: dict[str, float] = {}
    for layer in report.layers:
        if layer.alpha is not None:
            metrics[f"{PREFIX}/alpha/{layer.name}"] = layer.alpha
        if layer.alpha_farms is not None:
            metrics[f"{PREFIX}/alpha_farms/{layer.name}"] = layer.alpha_farms
    for name in SUMMARY_METRICS:
        value = report.summary.get(name)
        if value is not None:
            metrics[f"{PREFIX}/{name}"] = float(value)
    metrics[f"{PREFIX}/analysis_seconds"] = float(report.summary["seconds"])
    return metrics


def live_alpha_metrics(model: torch.nn.Module, settings: AlphaLogSettings) -> dict[str, float]:
    """The metrics of the model's current weights, analysed on rank 0 and broadcast."""
    parameter = next(model.parameters())
    return computed_on_rank_zero(
        lambda: alpha_metrics(analyze(model, settings.analysis(parameter.device), collective=False))
    )
