"""The analysis result: one `LayerResult` per weight tensor, a summary, and the
`htsr.report/1` JSON that other tools read.

Everything downstream (tables, allocations, the gate, compare, plots) consumes
a `Report`, whether it was just computed or read back from JSON.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from htsr_cli.errors import HtsrError
from htsr_cli.outputs import dumps_json

SCHEMA = "htsr.report/1"

# Layer statuses.
OK = "ok"
SKIPPED = "skipped"
FAILED = "failed"
FIT_FAILED = "fit-failed"

# Quality classes (algorithms.md section 4).
QUALITY_CLASSES = ("ok", "under-trained", "over-trained", "unknown")

METRIC_FIELDS = (
    "num_evals",
    "alpha",
    "xmin",
    "ks_distance",
    "sigma",
    "tail_size",
    "lambda_max",
    "log_spectral_norm",
    "log_norm",
    "stable_rank",
    "alpha_weighted",
    "log_alpha_norm",
    "entropy",
    "quality",
)
FARMS_FIELDS = ("alpha_farms", "xmin_farms", "ks_distance_farms", "farms_windows", "farms_num_evals")


def quality_of(alpha: float | None) -> str:
    if alpha is None:
        return "unknown"
    if alpha < 2.0:
        return "over-trained"
    if alpha > 6.0:
        return "under-trained"
    return "ok"


@dataclass
class LayerResult:
    """One weight tensor: identity, status, and (when analysed) its metrics."""

    name: str
    tensor: str
    kind: str
    shape: list[int]
    block: str | None
    params: int
    storage: str | None = None  # how the weight was stored: its dtype, or a quantization format
    status: str = OK
    reason: str | None = None
    num_evals: int | None = None
    alpha: float | None = None
    xmin: float | None = None
    ks_distance: float | None = None
    sigma: float | None = None
    tail_size: int | None = None
    lambda_max: float | None = None
    log_spectral_norm: float | None = None
    log_norm: float | None = None
    stable_rank: float | None = None
    alpha_weighted: float | None = None
    log_alpha_norm: float | None = None
    entropy: float | None = None
    quality: str | None = None
    alpha_farms: float | None = None
    xmin_farms: float | None = None
    ks_distance_farms: float | None = None
    farms_windows: int | None = None
    farms_num_evals: int | None = None

    @property
    def analysed(self) -> bool:
        """True when the layer has an eigenvalue spectrum (a fit may still have failed)."""
        return self.status in (OK, FIT_FAILED)

    def metric(self, name: str) -> float | None:
        return getattr(self, name)

    def to_json(self, with_farms: bool) -> dict[str, Any]:
        data = asdict(self)
        if not with_farms:
            for key in FARMS_FIELDS:
                data.pop(key)
        return data


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(layers: list[LayerResult], seconds: float, with_farms: bool) -> dict[str, Any]:
    """The model summary (algorithms.md section 4)."""
    fitted = [layer for layer in layers if layer.alpha is not None]
    alphas = [layer.alpha for layer in fitted]
    weights = [layer.params for layer in fitted]
    counts = {quality: 0 for quality in QUALITY_CLASSES}
    for layer in layers:
        if layer.analysed:
            counts[layer.quality or "unknown"] += 1
    summary: dict[str, Any] = {
        "layers": len(layers),
        "analyzed": sum(1 for layer in layers if layer.status == OK),
        "skipped": sum(1 for layer in layers if layer.status == SKIPPED),
        "failed": sum(1 for layer in layers if layer.status in (FAILED, FIT_FAILED)),
        "mean_alpha": _mean(alphas),
        "median_alpha": statistics.median(alphas) if alphas else None,
        "weighted_alpha": (
            sum(a * w for a, w in zip(alphas, weights)) / sum(weights) if fitted else None
        ),
        "mean_alpha_weighted": _mean(
            [layer.alpha_weighted for layer in fitted if layer.alpha_weighted is not None]
        ),
        "quality_counts": counts,
        "seconds": round(seconds, 3),
    }
    if with_farms:
        farms = [layer for layer in layers if layer.alpha_farms is not None]
        farms_alphas = [layer.alpha_farms for layer in farms]
        summary["mean_alpha_farms"] = _mean(farms_alphas)
        summary["median_alpha_farms"] = statistics.median(farms_alphas) if farms_alphas else None
        summary["weighted_alpha_farms"] = (
            sum(layer.alpha_farms * layer.params for layer in farms)
            / sum(layer.params for layer in farms)
            if farms
            else None
        )
        summary["quality_counts_farms"] = {
            quality: sum(1 for layer in layers if layer.analysed and quality_of(layer.alpha_farms) == quality)
            for quality in QUALITY_CLASSES
        }
    return summary


@dataclass(repr=False)
class Report:
    """A whole analysis: what was analysed, how, and the per-layer results.

    In a notebook: `report` shows the summary and the layer table,
    `report.to_pandas()` gives one row per layer, and `plot_overview()`,
    `plot_esd(layer)` and `plot_fit_diagnostics(layer)` return matplotlib Figures.
    """

    checkpoint: str
    settings: dict[str, Any]
    layers: list[LayerResult]
    summary: dict[str, Any]
    htsr_version: str = field(default="")
    # name -> LayerSpectra, filled only by analyze(..., keep_spectra=True); never serialised.
    spectra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # Seconds per pipeline stage, filled only by analyze(..., profile=True).
    timings: Any = field(default=None, repr=False, compare=False)

    @property
    def has_farms(self) -> bool:
        return bool(self.settings.get("farms"))

    def layer(self, name: str) -> LayerResult | None:
        for layer in self.layers:
            if layer.name == name:
                return layer
        return None

    def __repr__(self) -> str:
        s = self.summary
        mean = s.get("mean_alpha")
        return (
            f"Report(checkpoint={self.checkpoint!r}, layers={s.get('layers')}, analyzed={s.get('analyzed')}, "
            f"mean_alpha={'None' if mean is None else format(mean, '.3f')})"
        )

    def _repr_html_(self) -> str:
        from htsr_cli.report_views import report_html

        return report_html(self)

    def to_pandas(self) -> Any:
        """One row per layer (a pandas DataFrame), like WeightWatcher's `details`.

        Columns: `layer_id` (position in model order), every field of the JSON
        layer (`name`, `kind`, `alpha`, `ks_distance`, ...; FARMS fields when
        analysed with FARMS), and WeightWatcher's `N` and `M` (the long and short
        side of the layer's matrices). WeightWatcher calls `kind` `layer_type`
        and `ks_distance` `D`. Needs pandas: `pip install "htsr-cli[pandas]"`.
        """
        try:
            import pandas
        except ImportError:
            raise HtsrError(
                'Report.to_pandas needs pandas, an optional dependency: pip install "htsr-cli[pandas]"'
            ) from None
        rows = []
        for index, layer in enumerate(self.layers):
            row = {"layer_id": index, **layer.to_json(self.has_farms)}
            sides = sorted(layer.shape[:2], reverse=True) if len(layer.shape) >= 2 else [None, None]
            row["N"], row["M"] = sides
            rows.append(row)
        columns = ["layer_id", *(rows[0] if rows else LayerResult.__dataclass_fields__), "N", "M"]
        return pandas.DataFrame(rows, columns=list(dict.fromkeys(columns)))

    def _find(self, layer: str | LayerResult) -> LayerResult:
        name = layer.name if isinstance(layer, LayerResult) else layer
        found = self.layer(name)
        if found is None:
            raise HtsrError(f"no layer named {name!r} in this report (e.g. {self.layers[0].name!r})"
                            if self.layers else "this report has no layers")
        return found

    def plot_overview(self) -> Any:
        """alpha per layer in model order, coloured and shaped by quality: a matplotlib Figure."""
        from htsr_cli.plots import overview_figure

        return overview_figure(self)

    def plot_esd(self, layer: str | LayerResult) -> Any:
        """One layer's eigenvalue spectrum on log-log axes with its fit: a matplotlib Figure.

        Needs the spectra: `analyze(..., keep_spectra=True)`, or a saved report with
        `htsr_cli.attach_spectra(report, "run.spectra.safetensors")`.
        """
        from htsr_cli.plots import esd_figure, layer_spectra

        found = self._find(layer)
        return esd_figure(found, layer_spectra(self, found), self.checkpoint)

    def plot_fit_diagnostics(self, layer: str | LayerResult) -> Any:
        """Can this layer's fit be trusted? D and alpha against the xmin candidate, beside the
        log-log and linear ESD: a matplotlib Figure (needs the spectra, as `plot_esd`)."""
        from htsr_cli.plots import fit_diagnostics_figure, layer_spectra

        found = self._find(layer)
        method = self.settings.get("xmin", "ks")
        return fit_diagnostics_figure(found, layer_spectra(self, found), method, self.checkpoint)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "htsr_version": self.htsr_version,
            "checkpoint": self.checkpoint,
            "settings": self.settings,
            "layers": [layer.to_json(self.has_farms) for layer in self.layers],
            "summary": self.summary,
        }

    def dumps(self) -> str:
        return dumps_json(self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "report") -> "Report":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise HtsrError(f"{source}: not an {SCHEMA} report (schema is {found!r})")
        known = {f.name for f in fields(LayerResult)}
        try:
            layers = [
                LayerResult(**{key: value for key, value in entry.items() if key in known})
                for entry in data["layers"]
            ]
            return cls(
                checkpoint=data["checkpoint"],
                settings=data["settings"],
                layers=layers,
                summary=data["summary"],
                htsr_version=data.get("htsr_version", ""),
            )
        except (KeyError, TypeError) as error:
            raise HtsrError(f"{source}: malformed {SCHEMA} report ({error})") from None


def load_report(path: str | Path) -> Report:
    """Read a saved `htsr.report/1` JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HtsrError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HtsrError(f"{path}: cannot read report JSON ({error})") from None
    return Report.from_json(data, source=str(path))


def is_report_file(path: str | Path) -> bool:
    """True for a JSON file that declares itself an htsr report (cheap check on the suffix)."""
    return str(path).endswith(".json") and Path(path).is_file()

