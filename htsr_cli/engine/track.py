"""Alpha across a training run: every checkpoint analysed once, joined with the run's evaluations.

    run = track_run("runs/bert-finetune", AnalyzeSettings())
    run.layer_rows()       # checkpoint, step, layer, alpha, ... (one row per layer per checkpoint)
    run.correlations()     # Spearman of each summary metric with each evaluation metric

A run is the `checkpoint-<step>/` directories a transformers `Trainer` writes,
the `.ckpt` files of PyTorch Lightning (`epoch=E-step=S.ckpt`, the state dict
inside), or checkpoints given in order. Reports are cached by the content of
each checkpoint's weight files (`TrackCache`), so running again after new
checkpoints appear analyses only those. Evaluation metrics come from the
run's `trainer_state.json` (`log_history`) or Lightning's CSV logs
(`metrics.csv`), joined by step.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from htsr_cli import __version__
from htsr_cli.checkpoints.hf_directory import is_trainer_state
from htsr_cli.checkpoints.sources import MergedAdapter
from htsr_cli.engine.pipeline import analyze
from htsr_cli.errors import HtsrError, brief
from htsr_cli.io import os_reason, read_document, write_atomic
from htsr_cli.results.report import Report
from htsr_cli.settings import AnalyzeSettings, ProgressCallback

SCHEMA = "htsr.track/1"
CACHE_SCHEMA = "htsr.track-cache/1"
CACHE_NAME = ".htsr-track-cache.json"
TRAINER_STATE = "trainer_state.json"
LIGHTNING_METRICS = "metrics.csv"
_TRAINER_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_LIGHTNING_STEP = re.compile(r"(?:^|[-_])step=(\d+)")
# The summary metrics a run is followed by (Report.summary keys), in the order tables show them.
SUMMARY_METRICS = ("mean_alpha", "median_alpha", "weighted_alpha", "mean_alpha_weighted")
FARMS_SUMMARY_METRICS = ("mean_alpha_farms", "median_alpha_farms", "weighted_alpha_farms")
# Per-layer columns of the tidy table, after checkpoint, step and layer.
LAYER_FIELDS = (
    "block", "kind", "num_evals", "alpha", "alpha_weighted", "log_spectral_norm", "stable_rank",
    "ks_distance", "quality", "status",
)
# Logged numbers that are bookkeeping, not evaluations.
_NOT_METRICS = re.compile(r"(^|_)(step|epoch|runtime|samples_per_second|steps_per_second|total_flos|learning_rate|grad_norm)$")
BUFFER_BYTES = 1 << 20


@dataclass(frozen=True)
class RunCheckpoint:
    path: Path
    step: int

    @property
    def name(self) -> str:
        return self.path.name


def find_checkpoints(paths: list[str]) -> tuple[Path | None, list[RunCheckpoint]]:
    """(the run directory, its checkpoints by step): one directory is searched, several paths are taken in order.

    In a directory: `checkpoint-<step>/` sub-directories (Trainer) and, at any
    depth, `.ckpt` files whose name has `step=S` (Lightning; `last.ckpt`, a
    copy of the newest, is left out). Given paths keep their order; the step is
    read from their names where they have one, else it is the position (0, 1, ...).
    """
    if len(paths) == 1 and os.path.isdir(paths[0]):
        run = Path(paths[0])
        found = _run_checkpoints(run)
        if found:
            return run, found
        if not _holds_weights_itself(run):
            raise HtsrError(
                f"{run}: no checkpoints found (expected checkpoint-<step>/ directories as Trainer writes them "
                "or Lightning .ckpt files with step=S in their names)"
            )
    checkpoints = []
    for position, text in enumerate(paths):
        path = Path(text)
        if not path.exists():
            raise HtsrError(f"{text}: no such file or directory")
        checkpoints.append(RunCheckpoint(path, _step_in_name(path.name, position)))
    return None, checkpoints


def _holds_weights_itself(directory: Path) -> bool:
    """A model directory without checkpoints in it: one checkpoint given alone, not a run.

    (A Trainer's output directory often holds the final model beside its
    checkpoint-<step>/ directories: that is still a run.)"""
    return any((directory / name).is_file() for name in ("config.json", "adapter_config.json", "model.safetensors"))


def _step_in_name(name: str, default: int) -> int:
    for pattern in (_TRAINER_CHECKPOINT, _LIGHTNING_STEP):
        match = pattern.search(name.removesuffix(".ckpt"))
        if match:
            return int(match[1])
    return default


def _run_checkpoints(run: Path) -> list[RunCheckpoint]:
    try:
        found = [
            RunCheckpoint(entry, int(match[1]))
            for entry in run.iterdir()
            if (match := _TRAINER_CHECKPOINT.match(entry.name)) and entry.is_dir()
        ]
        for path in sorted(run.rglob("*.ckpt")):
            match = _LIGHTNING_STEP.search(path.stem)
            if match and path.is_file():
                found.append(RunCheckpoint(path, int(match[1])))
    except OSError as error:
        raise HtsrError(f"{run}: cannot read the run directory ({os_reason(error)})") from None
    return sorted(found, key=lambda checkpoint: (checkpoint.step, str(checkpoint.path)))


# --- the cache -----------------------------------------------------------------------------------


def weight_files(path: Path) -> list[Path]:
    """The files whose content decides a checkpoint's analysis: the file, or a directory's files
    except the optimizer, scheduler and trainer state a Trainer saves beside the weights."""
    if not path.is_dir():
        return [path]
    return sorted(
        entry for entry in path.iterdir()
        if entry.is_file() and not is_trainer_state(entry.name) and entry.name != TRAINER_STATE
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(BUFFER_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class TrackCache:
    """Reports by checkpoint, each valid while its weight files and the analysis settings are unchanged.

    A file whose size and modification time match is taken as unchanged; one
    whose stamp changed is hashed (sha256) and reused if its content did not
    (a copy, a `touch`). The cache is rewritten atomically after every
    checkpoint, so an interrupted run keeps what it finished.
    """

    path: Path | None
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> "TrackCache":
        if path is None or not path.exists():
            return cls(path)
        try:
            data = json.loads(read_document(path, register=False))  # its own cache: rewritten by this command
            if data.get("schema") != CACHE_SCHEMA or not isinstance(data.get("entries"), dict):
                raise ValueError(f"not an {CACHE_SCHEMA} file")
        except (ValueError, AttributeError, RecursionError) as error:
            raise HtsrError(f"{path}: not a track cache ({brief(error)}); delete it or pass another --cache") from None
        return cls(path, data["entries"])

    def key(self, checkpoint: RunCheckpoint) -> str:
        """The checkpoint's path relative to the cache file: a run directory moved or reached
        from another working directory keeps its cache."""
        if self.path is None:
            return str(checkpoint.path)
        return os.path.relpath(os.path.realpath(checkpoint.path), os.path.realpath(self.path.parent))

    def report(self, checkpoint: RunCheckpoint, settings: AnalyzeSettings, base: Path | None = None) -> Report | None:
        entry = self.entries.get(self.key(checkpoint))
        if entry is None or entry.get("settings") != _settings_json(settings):
            return None
        files = _input_files(checkpoint.path, base)
        stamps = _stamps(files)
        cached = entry.get("files", {})
        if set(stamps) != set(cached):
            return None
        for name, stamp in stamps.items():
            old = cached[name]
            if (stamp["size"], stamp["mtime_ns"]) != (old.get("size"), old.get("mtime_ns")):
                if stamp["size"] != old.get("size") or _sha256(files[name]) != old.get("sha256"):
                    return None
                old["mtime_ns"] = stamp["mtime_ns"]
        try:
            return Report.from_json(entry["report"], source=f"{self.path} ({checkpoint.name})")
        except HtsrError:
            return None  # written by another htsr version: analyse again

    def store(self, checkpoint: RunCheckpoint, settings: AnalyzeSettings, report: Report, base: Path | None = None) -> None:
        files = _input_files(checkpoint.path, base)
        stamps = _stamps(files)
        for name, stamp in stamps.items():
            stamp["sha256"] = _sha256(files[name])
        self.entries[self.key(checkpoint)] = {
            "settings": _settings_json(settings), "files": stamps, "report": report.to_json(),
        }
        if self.path is not None:
            write_atomic(self.path, json.dumps({"schema": CACHE_SCHEMA, "entries": self.entries}))


def _input_files(checkpoint: Path, base: Path | None) -> dict[str, Path]:
    """The files an analysis reads, by label: the checkpoint's, and a merged adapter's base's as `base/NAME`."""
    files = {file.name: file for file in weight_files(checkpoint)}
    if base is not None:
        files.update({f"base/{file.name}": file for file in weight_files(base)})
    return files


def _stamps(files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    stamps = {}
    for label, file in files.items():
        try:
            info = os.stat(file)
        except OSError as error:
            raise HtsrError(f"{file}: {os_reason(error)}") from None
        if stat.S_ISREG(info.st_mode):
            stamps[label] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
    return stamps


def _settings_json(settings: AnalyzeSettings) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(settings), default=str))


# --- evaluation metrics ----------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def trainer_log(run: Path, checkpoints: list[RunCheckpoint]) -> tuple[Path, list[tuple[int, str, float]]] | None:
    """(the file, (step, metric, value) logged) from the run's trainer_state.json, or None without one.

    The run directory's own file, else the newest checkpoint's (each
    checkpoint's holds the log up to its step).
    """
    candidates = [run / TRAINER_STATE] + [
        checkpoint.path / TRAINER_STATE for checkpoint in reversed(checkpoints) if checkpoint.path.is_dir()
    ]
    path = next((candidate for candidate in candidates if candidate.exists()), None)
    if path is None:
        return None
    try:
        history = json.loads(read_document(path))["log_history"]
        if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
            raise TypeError("log_history is not a list of objects")
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise HtsrError(f"{path}: unreadable trainer_state.json ({brief(error)})") from None
    logged = []
    for entry in history:
        step = entry.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            continue
        for key, value in entry.items():
            number = _number(value)
            if number is not None and not _NOT_METRICS.search(key):
                logged.append((step, key, number))
    return path, logged


def lightning_log(run: Path) -> tuple[Path, list[tuple[int, str, float]]] | None:
    """(the file, (step, metric, value) logged) from the newest Lightning metrics.csv under the run."""
    try:
        files = sorted(run.rglob(LIGHTNING_METRICS), key=lambda path: path.stat().st_mtime_ns)
    except OSError as error:
        raise HtsrError(f"{run}: cannot read the run directory ({os_reason(error)})") from None
    if not files:
        return None
    path = files[-1]
    try:
        rows = list(csv.DictReader(io.StringIO(read_document(path).decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as error:
        raise HtsrError(f"{path}: unreadable metrics.csv ({brief(error)})") from None
    logged = []
    for row in rows:
        try:
            step = int(row.get("step") or "")
        except ValueError:
            continue
        for key, text in row.items():
            if key is None or not text or _NOT_METRICS.search(key):
                continue
            try:
                value = float(text)
            except ValueError:
                continue
            if math.isfinite(value):
                logged.append((step, key, value))
    return path, logged


def join_by_step(steps: list[int], logged: list[tuple[int, str, float]]) -> list[dict[str, float]]:
    """Each checkpoint's evaluation values: per metric, the last value logged at or before its
    step and after the previous checkpoint's (so no value is counted for two checkpoints)."""
    joined: list[dict[str, float]] = []
    previous = -math.inf
    ordered = sorted(logged, key=lambda item: item[0])  # stable: a step's later entries stay later
    for step in steps:
        values = {}
        for logged_step, metric, value in ordered:
            if previous < logged_step <= step:
                values[metric] = value
        joined.append(values)
        previous = step
    return joined


# --- Spearman ---------------------------------------------------------------------------------------


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda index: values[index])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            result[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (Pearson's r of the tie-averaged ranks); None for fewer than 3 points or a constant side."""
    if len(x) != len(y) or len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class TrackedCheckpoint:
    checkpoint: RunCheckpoint
    report: Report
    reused: bool  # from the cache, not analysed now
    evaluation: dict[str, float] = field(default_factory=dict)

    def summary(self, metrics: tuple[str, ...]) -> dict[str, float | None]:
        return {metric: self.report.summary.get(metric) for metric in metrics}


@dataclass
class TrackedRun:
    run: str
    checkpoints: list[TrackedCheckpoint]
    settings: AnalyzeSettings
    eval_source: str | None = None  # the file the evaluation metrics came from

    @property
    def summary_metrics(self) -> tuple[str, ...]:
        return SUMMARY_METRICS + (FARMS_SUMMARY_METRICS if self.settings.farms is not None else ())

    @property
    def eval_metrics(self) -> list[str]:
        seen: dict[str, None] = {}
        for tracked in self.checkpoints:
            seen.update(dict.fromkeys(tracked.evaluation))
        return list(seen)

    def layer_rows(self) -> list[dict[str, Any]]:
        rows = []
        for tracked in self.checkpoints:
            for layer in tracked.report.layers:
                row = {"checkpoint": str(tracked.checkpoint.path), "step": tracked.checkpoint.step, "layer": layer.name}
                row.update({key: getattr(layer, key) for key in LAYER_FIELDS})
                rows.append(row)
        return rows

    def correlations(self) -> list[dict[str, Any]]:
        """Spearman's rho of every summary metric with every evaluation metric, over the checkpoints with both."""
        found = []
        for metric in self.summary_metrics:
            for eval_metric in self.eval_metrics:
                pairs = [
                    (value, tracked.evaluation[eval_metric])
                    for tracked in self.checkpoints
                    if (value := tracked.report.summary.get(metric)) is not None and eval_metric in tracked.evaluation
                ]
                rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
                found.append({"summary_metric": metric, "eval_metric": eval_metric, "spearman": rho, "points": len(pairs)})
        return found

    def alpha_grid(self, max_layers: int, metric: str = "alpha") -> tuple[str, list[str], list[list[float | None]]]:
        """("layer" or "block", the row names, metric per row per checkpoint) for the picture.

        Per layer up to `max_layers` layers, else per block (the mean over its
        layers with a value; a layer outside any block is its own row).
        """
        layers = self.checkpoints[0].report.layers
        by_name = [{layer.name: layer for layer in tracked.report.layers} for tracked in self.checkpoints]
        if len(layers) <= max_layers:
            names = [layer.name for layer in layers]
            return "layer", names, [[found[name].metric(metric) for found in by_name] for name in names]
        rows: dict[str, list[str]] = {}
        for layer in layers:
            rows.setdefault(layer.block or layer.name, []).append(layer.name)
        grid = []
        for members in rows.values():
            row = []
            for found in by_name:
                values = [v for name in members if (v := found[name].metric(metric)) is not None]
                row.append(sum(values) / len(values) if values else None)
            grid.append(row)
        return "block", list(rows), grid

    def to_json(self, gate: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "htsr_version": __version__,
            "run": self.run,
            "settings": self.checkpoints[0].report.settings,
            "eval_source": self.eval_source,
            "checkpoints": [
                {
                    "checkpoint": str(tracked.checkpoint.path),
                    "step": tracked.checkpoint.step,
                    "reused": tracked.reused,
                    "summary": tracked.summary(self.summary_metrics),
                    "eval": tracked.evaluation,
                }
                for tracked in self.checkpoints
            ],
            "layers": self.layer_rows(),
            "correlations": self.correlations(),
            "gate": gate,
        }


def _architecture(report: Report) -> dict[str, tuple[int, ...]]:
    return {layer.name: tuple(layer.shape) for layer in report.layers}


def check_same_architecture(reports: list[tuple[RunCheckpoint, Report]]) -> None:
    """Every checkpoint of a run has the same layers with the same shapes; one line naming the first difference."""
    first, reference = reports[0][0], _architecture(reports[0][1])
    for checkpoint, report in reports[1:]:
        layers = _architecture(report)
        if layers == reference:
            continue
        missing = [name for name in reference if name not in layers]
        extra = [name for name in layers if name not in reference]
        if missing or extra:
            detail = f"{missing[0]} only in {first.name}" if missing else f"{extra[0]} only in {checkpoint.name}"
        else:
            name = next(name for name in reference if reference[name] != layers[name])
            detail = f"{name} is {list(reference[name])} in {first.name}, {list(layers[name])} in {checkpoint.name}"
        raise HtsrError(f"checkpoints of different architectures in one run: {first.name} and {checkpoint.name} ({detail})")


def track_run(
    paths: list[str],
    settings: AnalyzeSettings,
    *,
    cache_file: Path | None = None,
    use_cache: bool = True,
    merged_base: str | None = None,
    progress: ProgressCallback | None = None,
) -> TrackedRun:
    """Analyse (or take from the cache) every checkpoint of a run, check they share one architecture,
    and join the run's evaluation metrics by step.

    `paths`: one run directory, or checkpoints in order. The cache defaults to
    `.htsr-track-cache.json` in the run directory (none for a list of paths
    unless `cache_file` is given). `progress(done, total, checkpoint name)` is
    called before each checkpoint. With `merged_base`, the checkpoints are PEFT
    adapters and each is analysed merged into that base (`MergedAdapter`).
    """
    run, checkpoints = find_checkpoints(paths)
    if cache_file is None and run is not None:
        cache_file = run / CACHE_NAME
    cache = TrackCache.load(cache_file if use_cache else None)
    base = Path(merged_base) if merged_base is not None else None
    reports: list[tuple[RunCheckpoint, Report, bool]] = []
    for index, checkpoint in enumerate(checkpoints):
        cached = cache.report(checkpoint, settings, base)
        if cached is not None:
            reports.append((checkpoint, cached, True))
            continue
        if progress is not None:
            progress(index, len(checkpoints), checkpoint.name)
        source = str(checkpoint.path) if merged_base is None else MergedAdapter(str(checkpoint.path), merged_base)
        report = analyze(source, settings)
        if use_cache:
            cache.store(checkpoint, settings, report, base)
        reports.append((checkpoint, report, False))
        if len(reports) > 1:  # fail early, before analysing the rest of a mixed run
            check_same_architecture([(reports[0][0], reports[0][1]), (checkpoint, report)])
    check_same_architecture([(checkpoint, report) for checkpoint, report, _ in reports])
    tracked = [TrackedCheckpoint(checkpoint, report, reused) for checkpoint, report, reused in reports]
    eval_source = None
    if run is not None:
        log = trainer_log(run, checkpoints) or lightning_log(run)
        if log is not None:
            path, logged = log
            eval_source = str(path)
            for item, values in zip(tracked, join_by_step([c.step for c in checkpoints], logged)):
                item.evaluation = values
    label = str(run) if run is not None else ", ".join(paths)
    return TrackedRun(label, tracked, settings, eval_source)
