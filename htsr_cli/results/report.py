"""The analysis result: one `LayerResult` per weight tensor, a summary, and the
`htsr.report/1` JSON that other tools read.

Everything downstream (tables, allocations, the gate, compare, plots) consumes
a `Report`, whether it was just computed or read back from JSON.
"""

from __future__ import annotations

import os
import statistics
import threading
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypedDict

from htsr_cli.results.documents import (
    COUNT, IDENTIFIER, LIST, NAME, OBJECT, SHAPE, TEXT, Kind, check_fields, number, one_of, parse_json,
)
from htsr_cli.errors import HtsrError
from htsr_cli.io import read_document
from htsr_cli.names import readable
from htsr_cli.results.documents import dumps_json
from htsr_cli.settings import FITS, FIX_FINGERS, QUALITY_BANDS, SMALL_N_METHODS, XMIN_METHODS, AnalyzeSettings

if TYPE_CHECKING:  # a report is read and gated without importing torch
    import torch

SCHEMA = "htsr.report/1"

# Layer statuses.
OK = "ok"
SKIPPED = "skipped"
FAILED = "failed"
FIT_FAILED = "fit-failed"

# Quality classes (algorithms.md section 4).
QUALITY_CLASSES = ("ok", "under-trained", "over-trained", "unknown")

FARMS_FIELDS = ("alpha_farms", "xmin_farms", "ks_distance_farms", "farms_windows", "farms_num_evals")
# Written only when asked for (settings fit = tpl/e_tpl, fix_fingers = clip_xmax), so
# a report analysed without them is byte-identical to one from before they existed.
TPL_FIELDS = ("alpha_tpl", "lambda_tpl", "xmin_tpl", "ks_distance_tpl", "tail_size_tpl")
CLIP_FIELDS = ("raw_alpha", "num_fingers")
# The settings of WeightWatcher's variants and their defaults, written only when not the default.
VARIANT_SETTINGS = {"fit": "pl", "fix_fingers": "none", "small_n": "htsr"}
# WeightWatcher's random-matrix metrics: the layer fields of each pass, written only
# by runs that asked for it (the settings key of the same name says so).
RMT_FIELDS = {
    "mp_fit": ("sigma_mp", "bulk_min", "bulk_max", "num_spikes", "mp_softrank"),
    "randomize": (
        "rand_distance", "ww_softrank", "ww_maxdist", "max_rand_eval", "rand_num_spikes", "rand_sigma_mp",
        "rand_bulk_max", "trap_evals",
    ),
    "detx": ("detx_num", "detx_val", "detx_gap", "detx_xmin_distance"),
}
# Every optional group of layer fields, by the settings key whose presence says the run computed it.
OPTIONAL_FIELDS = {"fit": TPL_FIELDS, "fix_fingers": CLIP_FIELDS, **RMT_FIELDS}


class FarmsSettingsJson(TypedDict):
    """`settings.farms` of a report: `FarmsSettings` as written."""

    window: int
    q: float
    steps: int


class RandomizeSettingsJson(TypedDict):
    """`settings.randomize` of a report analysed with `--randomize`."""

    seed: int


class _ReportSettingsRequired(TypedDict):
    xmin: str
    device: str  # the device the solves ran on: "cpu" or "cuda"
    precision: str  # the requested mode (`--precision`)


class ReportSettings(_ReportSettingsRequired, total=False):
    """`Report.settings`: what was asked (`AnalyzeSettings`) and what the run used (`RunRecord`).

    Every report htsr writes has every key (`report_settings`); reports saved
    by older versions may lack the optional ones, which `check_report` allows.
    """

    xmin_candidates: str  # "exact", or "grid" when some fit chose xmin on the candidate grid
    farms: FarmsSettingsJson | None
    gram_precision: str  # the Gram dtypes the solved layers used, "+"-joined: "float32", "float32+float64"
    eigensolver_precision: str
    conv_scale: float
    min_evals: int
    layers: str | None
    max_memory: int | None
    fit: str  # the keys below only when not their default ("pl", "none", "htsr")
    fix_fingers: str
    small_n: str
    mp_fit: bool  # the three keys only in reports of runs that asked for them
    randomize: RandomizeSettingsJson
    detx: bool


class _ReportSummaryRequired(TypedDict):
    layers: int
    analyzed: int
    skipped: int
    failed: int
    mean_alpha: float | None
    median_alpha: float | None
    weighted_alpha: float | None
    quality_counts: dict[str, int]  # quality class -> analysed layers in it
    seconds: float


class ReportSummary(_ReportSummaryRequired, total=False):
    """`Report.summary` (algorithms.md section 4); the FARMS keys only when analysed with FARMS."""

    mean_alpha_weighted: float | None  # always written; absent from reports of older versions
    mean_alpha_farms: float | None
    median_alpha_farms: float | None
    weighted_alpha_farms: float | None
    quality_counts_farms: dict[str, int]


@dataclass(frozen=True)
class RunRecord:
    """What an analysis run used, beside the `AnalyzeSettings` that asked for it.

    The settings say what was requested (device "auto", precision "mixed");
    this says what happened (the solves ran on "cuda"; some layers kept a
    float64 Gram). `report_settings` writes both as the report's `settings`.
    """

    device: str  # the device type the solves ran on: "cpu" or "cuda"
    xmin_candidates: str  # "exact", or "grid" when any fit chose xmin on the candidate grid
    gram_precisions: frozenset[str]  # the dtypes the Grams were formed in: "float32", "float64"
    eigensolver_precision: str  # the eigensolver's dtype: "float32" or "float64"


def report_settings(settings: AnalyzeSettings, record: RunRecord) -> ReportSettings:
    """The `settings` object of the htsr.report/1 JSON, from the request and the run's record.

    A run whose solved layers used both Gram dtypes (mixed mode keeps float64
    weights in a float64 Gram) writes "float32+float64".
    """
    farms = settings.farms
    variants = {key: getattr(settings, key) for key, default in VARIANT_SETTINGS.items() if getattr(settings, key) != default}
    written: ReportSettings = {  # type: ignore[typeddict-item]
        "xmin": settings.xmin,
        "xmin_candidates": record.xmin_candidates,
        "farms": {"window": farms.window, "q": farms.q, "steps": farms.steps} if farms else None,
        "device": record.device,
        "precision": settings.precision,
        "gram_precision": "+".join(sorted(record.gram_precisions)),
        "eigensolver_precision": record.eigensolver_precision,
        "conv_scale": settings.conv_scale,
        "min_evals": settings.min_evals,
        "layers": settings.layers,
        "max_memory": None if settings.max_memory is None else int(settings.max_memory),  # bytes once parsed
        **variants,
    }
    # Only when asked for: reports of runs without them stay as they were.
    if settings.mp_fit:
        written["mp_fit"] = True
    if settings.randomize:
        written["randomize"] = {"seed": settings.seed}
    if settings.detx:
        written["detx"] = True
    return written


@dataclass
class StageTimes:
    """Seconds spent per pipeline stage (`--profile`), and how many matrices and batches were solved.

    read and transfer run on the loader thread, concurrently with solve and fit
    on the solve threads (two at once on a multi-core CPU, fits on a thread pool
    beside a GPU), so the stages add up to more than the wall time.
    """

    read: float = 0.0
    transfer: float = 0.0
    solve: float = 0.0
    fit: float = 0.0
    farms: float = 0.0
    wall: float = 0.0
    matrices: int = 0
    batches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str, amount: float) -> None:
        with self._lock:  # solve threads and fit threads add concurrently
            setattr(self, stage, getattr(self, stage) + amount)

    def to_json(self) -> dict[str, float]:
        return {
            key: round(value, 4) if isinstance(value, float) else value
            for key, value in self.__dict__.items()
            if not key.startswith("_")
        }


@dataclass
class LayerSpectra:
    """The eigenvalues behind one layer's numbers, kept only when asked (plots, reports)."""

    esd: torch.Tensor  # sorted pooled ESD, CPU float64
    farms: torch.Tensor | None = None  # sorted pooled FARMS ESD


def quality_of(alpha: float | None, xmin: str = "ks") -> str:
    """The quality class of a layer's alpha, fitted with the xmin rule `xmin` (its band in QUALITY_BANDS)."""
    if alpha is None:
        return "unknown"
    low, high = QUALITY_BANDS[xmin]
    if alpha < low:
        return "over-trained"
    if alpha > high:
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
    # --precision float32: whether the float32 eigensolve was redone in float64
    # (the guard found it not accurate enough); null in the other modes.
    eigensolver_redone: bool | None = None
    # --fit tpl / e_tpl: WeightWatcher's truncated power law x^-alpha_tpl e^(-lambda_tpl x) from xmin_tpl.
    alpha_tpl: float | None = None
    lambda_tpl: float | None = None
    xmin_tpl: float | None = None
    ks_distance_tpl: float | None = None
    tail_size_tpl: int | None = None
    # --fix-fingers clip_xmax: the unclipped fit's alpha and WeightWatcher's num_fingers
    # (the eigenvalues clipped off the top, less one; 0 when none were).
    raw_alpha: float | None = None
    num_fingers: int | None = None
    # --mp-fit: the Marchenko-Pastur fit of the ESD (sigma_mp in units of the ESD rescaled to mean 1).
    sigma_mp: float | None = None
    bulk_min: float | None = None
    bulk_max: float | None = None
    num_spikes: int | None = None
    mp_softrank: float | None = None
    # --randomize: the ESD against the ESD of the element-wise shuffled weights.
    rand_distance: float | None = None
    ww_softrank: float | None = None
    ww_maxdist: float | None = None
    max_rand_eval: float | None = None
    rand_num_spikes: int | None = None  # correlation traps
    rand_sigma_mp: float | None = None
    rand_bulk_max: float | None = None
    trap_evals: list[float] | None = None  # the largest traps' eigenvalues, descending (at most 10)
    # --detx: the detX condition, and how far alpha's tail start is from it.
    detx_num: int | None = None
    detx_val: float | None = None
    detx_gap: int | None = None  # detx_num - tail_size (WeightWatcher's ERG_gap)
    detx_xmin_distance: float | None = None  # log10(xmin / detx_val): decades from detX's tail start to alpha's

    def __post_init__(self) -> None:
        # A lone surrogate in a name (a JSON `\ud800`) cannot be encoded, drawn or written:
        # the report holds, shows and saves it as U+FFFD.
        self.name = readable(self.name)
        if self.block is not None:
            self.block = readable(self.block)

    @property
    def analysed(self) -> bool:
        """True when the layer has an eigenvalue spectrum (a fit may still have failed)."""
        return self.status in (OK, FIT_FAILED)

    def metric(self, name: str) -> float | None:
        return getattr(self, name)

    def to_json(self, with_farms: bool, groups: Collection[str] = ()) -> dict[str, Any]:
        """The layer's JSON object: the FARMS fields `with_farms`, and each group of OPTIONAL_FIELDS named in `groups`."""
        data = asdict(self)
        if not with_farms:
            for key in FARMS_FIELDS:
                data.pop(key)
        for group, keys in OPTIONAL_FIELDS.items():
            if group not in groups:
                for key in keys:
                    data.pop(key)
        return data


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(layers: list[LayerResult], seconds: float, with_farms: bool, xmin: str = "ks") -> ReportSummary:
    """The model summary (algorithms.md section 4); `xmin` is the rule the alphas were fitted with (their quality band)."""
    fitted = [layer for layer in layers if layer.alpha is not None]
    alphas = [layer.alpha for layer in fitted]
    weights = [layer.params for layer in fitted]
    counts = {quality: 0 for quality in QUALITY_CLASSES}
    for layer in layers:
        if layer.analysed:
            counts[layer.quality or "unknown"] += 1
    summary: ReportSummary = {
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
            quality: sum(1 for layer in layers if layer.analysed and quality_of(layer.alpha_farms, xmin) == quality)
            for quality in QUALITY_CLASSES
        }
    return summary


def _render() -> ModuleType:
    """htsr_cli.render, imported when a report is drawn or shown in a notebook.

    The one deliberate upward import in htsr_cli: rendering sits above results
    (it takes reports), yet a Report offers `plot_*` and `_repr_html_` itself
    for notebooks. Importing at call time keeps the module graph acyclic and
    `import htsr_cli.results` free of matplotlib.
    """
    from htsr_cli import render

    return render


@dataclass(repr=False)
class Report:
    """A whole analysis: what was analysed, how, and the per-layer results.

    In a notebook: `report` shows the summary and the layer table,
    `report.to_pandas()` gives one row per layer, and `plot_overview()`,
    `plot_esd(layer)` and `plot_fit_diagnostics(layer)` return matplotlib Figures.
    """

    checkpoint: str
    settings: ReportSettings
    layers: list[LayerResult]
    summary: ReportSummary
    htsr_version: str = field(default="")
    # What the file format says about the checkpoint as a whole (Checkpoint.format_info):
    # {"format": "gguf", "architecture": "llama", "file_type": "MOSTLY_Q4_K_M", ...}; None for plain weights.
    checkpoint_format: dict[str, Any] | None = None
    # name -> LayerSpectra, filled only by analyze(..., keep_spectra=True); never serialised.
    spectra: dict[str, LayerSpectra] = field(default_factory=dict, repr=False, compare=False)
    # Seconds per pipeline stage, filled only by analyze(..., profile=True).
    timings: StageTimes | None = field(default=None, repr=False, compare=False)

    @property
    def has_farms(self) -> bool:
        return bool(self.settings.get("farms"))

    @property
    def field_groups(self) -> tuple[str, ...]:
        """The optional field groups this report's layers carry (OPTIONAL_FIELDS: TPL, clipping, the RMT passes)."""
        return tuple(group for group in OPTIONAL_FIELDS if self.settings.get(group))

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
        return _render().report_html(self)

    def to_pandas(self) -> Any:
        """One row per layer (a pandas DataFrame), like WeightWatcher's `details`.

        Columns: `layer_id` (position in model order), every field of the JSON
        layer (`name`, `kind`, `alpha`, `ks_distance`, ...; FARMS fields when
        analysed with FARMS), and WeightWatcher's `N` and `M` (the long and short
        side of the layer's matrices). WeightWatcher calls `kind` `layer_type`
        and `ks_distance` `D`. Needs pandas (`pip install pandas`, or
        `pip install ".[pandas]"` in a clone of htsr).
        """
        try:
            import pandas
        except ImportError:
            raise HtsrError(
                "Report.to_pandas needs pandas, an optional dependency: pip install pandas "
                '(or, in a clone of htsr, pip install ".[pandas]")'
            ) from None
        rows = []
        for index, layer in enumerate(self.layers):
            row = {"layer_id": index, **layer.to_json(self.has_farms, self.field_groups)}
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

    def spectra_of(self, layer: LayerResult) -> LayerSpectra:
        """The eigenvalues kept for `layer`; an error saying how to keep them when there are none."""
        spectra = self.spectra.get(layer.name)
        if spectra is None:
            raise HtsrError(
                f"no spectrum kept for layer {layer.name!r}: analyze with keep_spectra=True "
                "(or attach a --save-spectra file with htsr_cli.attach_spectra)"
            )
        return spectra

    def plot_overview(self) -> Any:
        """alpha per layer in model order, coloured and shaped by quality: a matplotlib Figure."""
        return _render().overview_figure(self)

    def plot_esd(self, layer: str | LayerResult) -> Any:
        """One layer's eigenvalue spectrum on log-log axes with its fit: a matplotlib Figure.

        Needs the spectra: `analyze(..., keep_spectra=True)`, or a saved report with
        `htsr_cli.attach_spectra(report, "run.spectra.safetensors")`.
        """
        found = self._find(layer)
        return _render().esd_figure(found, self.spectra_of(found), self.checkpoint)

    def plot_fit_diagnostics(self, layer: str | LayerResult) -> Any:
        """Can this layer's fit be trusted? D and alpha against the xmin candidate, beside the
        log-log and linear ESD: a matplotlib Figure (needs the spectra, as `plot_esd`)."""
        found = self._find(layer)
        method = self.settings.get("xmin", "ks")
        return _render().fit_diagnostics_figure(found, self.spectra_of(found), method, self.checkpoint)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "htsr_version": self.htsr_version,
            "checkpoint": self.checkpoint,
            "checkpoint_format": self.checkpoint_format,
            "settings": self.settings,
            "layers": [layer.to_json(self.has_farms, self.field_groups) for layer in self.layers],
            "summary": self.summary,
        }

    def dumps(self) -> str:
        return dumps_json(self.to_json())

    @classmethod
    def from_json(cls, data: Any, source: str = "report") -> "Report":
        """A report from its JSON, every field checked (see `check_report`)."""
        check_report(data, source)
        known = {f.name for f in fields(LayerResult)}
        layers = [LayerResult(**{key: value for key, value in entry.items() if key in known}) for entry in data["layers"]]
        return cls(
            checkpoint=data["checkpoint"],
            settings=data["settings"],
            layers=layers,
            summary=data["summary"],
            htsr_version=data.get("htsr_version", ""),
            checkpoint_format=data.get("checkpoint_format"),
        )


STATUSES = (OK, SKIPPED, FAILED, FIT_FAILED)
ALPHA = number(1.0, above=True).or_null()  # a power-law exponent fitted to a density is > 1
POSITIVE = number(0.0, above=True).or_null()
FRACTION = number(0.0, 1.0).or_null()
NON_NEGATIVE = number(0.0).or_null()
FINITE = number().or_null()
FLAG = Kind(lambda value: isinstance(value, bool), "true or false")
EIGENVALUES = Kind(lambda value: isinstance(value, list) and all(NON_NEGATIVE.test(x) for x in value), "a list of eigenvalues")
LAYER_FIELDS = {
    "name": NAME, "tensor": TEXT, "kind": NAME, "shape": SHAPE, "block": TEXT.or_null(), "params": COUNT,
    "storage": TEXT.or_null(), "status": one_of(STATUSES), "reason": TEXT.or_null(),
    "num_evals": COUNT.or_null(), "alpha": ALPHA, "xmin": POSITIVE, "ks_distance": FRACTION,
    "sigma": NON_NEGATIVE, "tail_size": COUNT.or_null(), "lambda_max": NON_NEGATIVE,
    "log_spectral_norm": FINITE, "log_norm": FINITE, "stable_rank": NON_NEGATIVE, "alpha_weighted": FINITE,
    "log_alpha_norm": FINITE, "entropy": FINITE, "quality": one_of(QUALITY_CLASSES).or_null(),
    "alpha_farms": ALPHA, "xmin_farms": POSITIVE, "ks_distance_farms": FRACTION,
    "farms_windows": COUNT.or_null(), "farms_num_evals": COUNT.or_null(),
    "alpha_tpl": NON_NEGATIVE, "lambda_tpl": NON_NEGATIVE, "xmin_tpl": POSITIVE, "ks_distance_tpl": FRACTION,
    "tail_size_tpl": COUNT.or_null(), "raw_alpha": ALPHA, "num_fingers": COUNT.or_null(),
    "sigma_mp": POSITIVE, "bulk_min": NON_NEGATIVE, "bulk_max": NON_NEGATIVE, "num_spikes": COUNT.or_null(),
    "mp_softrank": NON_NEGATIVE, "rand_distance": NON_NEGATIVE, "ww_softrank": NON_NEGATIVE, "ww_maxdist": FINITE,
    "max_rand_eval": NON_NEGATIVE, "rand_num_spikes": COUNT.or_null(), "rand_sigma_mp": POSITIVE,
    "rand_bulk_max": NON_NEGATIVE, "trap_evals": EIGENVALUES.or_null(), "detx_num": COUNT.or_null(),
    "detx_val": NON_NEGATIVE, "detx_gap": FINITE, "detx_xmin_distance": FINITE,
}
REQUIRED_LAYER_FIELDS = ("name", "tensor", "kind", "shape", "block", "params")
# What a layer of each status other than ok cannot carry: no alpha without a fit
# (a fit-failed layer may still have its FARMS alpha).
NOT_FITTED = {SKIPPED: ("alpha", "alpha_farms", "alpha_tpl"), FAILED: ("alpha", "alpha_farms", "alpha_tpl"), FIT_FAILED: ("alpha",)}
SETTINGS_FIELDS = {
    "xmin": one_of(XMIN_METHODS), "xmin_candidates": one_of(("exact", "grid")),
    "farms": OBJECT.or_null(), "device": IDENTIFIER, "precision": IDENTIFIER,
    "conv_scale": number(0.0, above=True), "min_evals": COUNT, "layers": TEXT.or_null(),
    "fit": one_of(FITS), "fix_fingers": one_of(FIX_FINGERS), "small_n": one_of(SMALL_N_METHODS),
    "mp_fit": FLAG, "randomize": OBJECT, "detx": FLAG,
}
FARMS_SETTINGS_FIELDS = {"window": COUNT, "q": number(0.0, above=True), "steps": COUNT}
SUMMARY_FIELDS = {
    "layers": COUNT, "analyzed": COUNT, "skipped": COUNT, "failed": COUNT,
    "mean_alpha": FINITE, "median_alpha": FINITE, "weighted_alpha": FINITE, "mean_alpha_weighted": FINITE,
    "quality_counts": OBJECT, "seconds": number(0.0),
    "mean_alpha_farms": FINITE, "median_alpha_farms": FINITE, "weighted_alpha_farms": FINITE,
    "quality_counts_farms": OBJECT,
}


def check_report(data: Any, source: str) -> None:
    """Refuse a document that is not a well-formed `htsr.report/1`, naming the first bad field.

    Every field htsr reads is type-checked, enums (status, quality, xmin) are
    checked against their values, numbers must be finite and in range (alpha > 1,
    xmin > 0, D in [0, 1]), and layer names must be unique. Unknown fields are
    ignored, so reports from newer versions with extra fields still load.
    """
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise HtsrError(f"{source}: not an {SCHEMA} report (schema is {found!r})")
    check_fields(
        data,
        {
            "checkpoint": TEXT, "htsr_version": TEXT, "settings": OBJECT, "layers": LIST, "summary": OBJECT,
            "checkpoint_format": OBJECT.or_null(),
        },
        source,
        required=("checkpoint", "settings", "layers", "summary"),
    )
    settings = data["settings"]
    check_fields(settings, SETTINGS_FIELDS, f"{source}: settings", required=("xmin", "device", "precision"))
    if "randomize" in settings:
        check_fields(settings["randomize"], {"seed": COUNT}, f"{source}: settings.randomize", required=("seed",))
    if settings.get("farms") is not None:
        check_fields(settings["farms"], FARMS_SETTINGS_FIELDS, f"{source}: settings.farms", required=tuple(FARMS_SETTINGS_FIELDS))
    names: set[str] = set()
    for index, entry in enumerate(data["layers"]):
        where = f"{source}: layer {index}"
        check_fields(entry, LAYER_FIELDS, where, required=REQUIRED_LAYER_FIELDS)
        status = entry.get("status", OK)
        if status != OK:  # the status is trusted: a layer that failed or was skipped has no fitted numbers
            carried = next((key for key in NOT_FITTED[status] if entry.get(key) is not None), None)
            if carried is not None:
                raise HtsrError(
                    f"{where}: status {status!r} but it carries {carried} {entry[carried]!r}; "
                    "the report is inconsistent (edited or damaged)"
                )
        if entry["name"] in names:
            raise HtsrError(f"{where}: the name {entry['name']!r} is used by an earlier layer")
        names.add(entry["name"])
    summary = data["summary"]
    check_fields(
        summary, SUMMARY_FIELDS, f"{source}: summary",
        required=("layers", "analyzed", "skipped", "failed", "mean_alpha", "median_alpha", "weighted_alpha",
                  "quality_counts", "seconds"),
    )
    for key in ("quality_counts", "quality_counts_farms"):
        if key in summary:
            check_fields(summary[key], dict.fromkeys(summary[key], COUNT), f"{source}: summary.{key}")


def load_report(path: str | Path) -> Report:
    """Read a saved `htsr.report/1` JSON file (a regular file; every field checked)."""
    return Report.from_json(parse_json(read_document(path), str(path)), source=str(path))


def is_report_file(path: str | Path) -> bool:
    """True for an existing `*.json` path: a saved report, not a checkpoint (its loader checks the rest)."""
    if not str(path).endswith(".json"):
        return False
    try:
        os.stat(path)
    except FileNotFoundError:
        return False  # a missing path: reported as one by the checkpoint path
    except (OSError, ValueError):
        return True  # unreadable: the report loader says why
    return True


def spectra_path_for(report_path: str | Path) -> Path:
    """Where a report's spectra are by default: `run.json` -> `run.spectra.safetensors`."""
    return Path(report_path).with_suffix(".spectra.safetensors")
