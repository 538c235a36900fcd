"""htsr track: alpha across a training run's checkpoints, joined with its evaluations
(examples in the command's help)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Group
from rich.text import Text

from htsr_cli.cli._analysis_options import analysis_options
from htsr_cli.cli._options import DEFAULT_DPI, PLOT_SUFFIXES, DpiOpt, MergedOpt, Metric, OutputOpt, QuietOpt
from htsr_cli.cli._output import emit_renderable, emit_text, layer_progress, stderr_console, table_width, wrote
from htsr_cli.checkpoints.sources import check_source
from htsr_cli.errors import HtsrError
from htsr_cli.io import check_output_paths
from htsr_cli.render.outputs import Column, printable, to_csv
from htsr_cli.render.terminal import terminal_table
from htsr_cli.results.documents import dumps_json
from htsr_cli.settings import AnalyzeSettings

LAYER_COLUMNS = (
    "checkpoint", "step", "layer", "block", "kind", "num_evals", "alpha", "alpha_weighted", "log_spectral_norm",
    "stable_rank", "ks_distance", "quality", "status",
)


class TrackFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def _summary_table(run, width: int | None):
    metrics = run.summary_metrics
    evals = run.eval_metrics
    columns = [Column("step", "step"), Column("checkpoint", "checkpoint", justify="left")]
    columns += [Column(metric, metric, 3) for metric in metrics] + [Column(name, name, 4) for name in evals]
    columns.append(Column("source", "source", justify="left"))
    rows = []
    for tracked in run.checkpoints:
        row: dict[str, Any] = {"step": tracked.checkpoint.step, "checkpoint": tracked.checkpoint.name,
                               "source": "cache" if tracked.reused else "analyzed"}
        row.update(tracked.summary(metrics))
        row.update(tracked.evaluation)
        rows.append(row)
    return terminal_table(columns, rows, width, title=f"htsr track: {run.run}", name_key="checkpoint",
                          keep=("step", "checkpoint"))


def _correlation_table(run, width: int | None):
    correlations = run.correlations()
    if not correlations:
        source = "no trainer_state.json or metrics.csv found" if run.eval_source is None else "no evaluation metric logged"
        return Text(f"no correlations: {source}")
    columns = [Column("summary_metric", "HT-SR metric", justify="left"), Column("eval_metric", "eval metric", justify="left"),
               Column("spearman", "Spearman rho", 3), Column("points", "points")]
    return terminal_table(columns, correlations, width, notes=[f"evaluations from {run.eval_source}"],
                          name_key="eval_metric", keep=("summary_metric", "eval_metric", "spearman"))


def _gate_config(metric, alpha_min, alpha_max, max_alpha_drift, mean_alpha_max):
    from htsr_cli.gate.config import GateConfig

    if all(limit is None for limit in (alpha_min, alpha_max, max_alpha_drift, mean_alpha_max)):
        return None
    return GateConfig(
        metric=metric.value, alpha_min=alpha_min, alpha_max=alpha_max, max_alpha_drift=max_alpha_drift,
        mean_alpha_max=mean_alpha_max, origin="flags",
    )


@analysis_options
def track(
    run: Annotated[list[str], typer.Argument(metavar="RUN_DIR|CHECKPOINT...", help="A training run's output directory (checkpoint-<step>/ directories, Lightning .ckpt files), or checkpoints in order.", show_default=False)],
    output_format: Annotated[TrackFormat, typer.Option("--format", "-f", help="table: per-checkpoint summary and correlations; json: htsr.track/1; csv: one row per layer per checkpoint.")] = TrackFormat.table,
    output: OutputOpt = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw alpha per layer (or block) against step: summary on top, heatmap, lines (.png, .svg or .pdf).", dir_okay=False, show_default="no plot")] = None,
    dpi: DpiOpt = DEFAULT_DPI,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Where reports are cached by the content of each checkpoint's weight files.", dir_okay=False, show_default="RUN_DIR/.htsr-track-cache.json")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Analyse every checkpoint again and write no cache.")] = False,
    metric: Annotated[Metric, typer.Option("--metric", help="Which alpha the gate reads and the plot draws.")] = Metric.alpha,
    alpha_min: Annotated[Optional[float], typer.Option("--alpha-min", help="Gate: lowest allowed alpha per layer, at every checkpoint.")] = None,
    alpha_max: Annotated[Optional[float], typer.Option("--alpha-max", help="Gate: highest allowed alpha per layer, at every checkpoint.")] = None,
    max_alpha_drift: Annotated[Optional[float], typer.Option("--max-alpha-drift", help="Gate: largest allowed |alpha change| per layer from the previous checkpoint.")] = None,
    mean_alpha_max: Annotated[Optional[float], typer.Option("--mean-alpha-max", help="Gate: highest allowed mean alpha at every checkpoint.")] = None,
    settings: AnalyzeSettings = AnalyzeSettings(),
    merged: MergedOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Alpha across a training run: every checkpoint analyzed (once: reports are cached),
    joined by step with the evaluations the run logged, and how each HT-SR summary
    metric correlates with each of them (Spearman).

    With a gate option the command exits 1 when any checkpoint breaks a rule
    (the rules of `htsr gate`; drift is measured from the previous checkpoint).

    [bold]Examples:[/bold]
      htsr track runs/bert-finetune --plot alpha.png
      htsr track lightning_logs/version_0 -f csv -o alpha.csv
      htsr track ckpt-a.safetensors ckpt-b.safetensors ckpt-c.safetensors --cache run-cache.json
      htsr track runs/bert-finetune --alpha-min 2 --alpha-max 6 --max-alpha-drift 0.5
      htsr track runs/llama-lora --merged ./llama-base      (each adapter checkpoint merged into its base)
    """
    if plot is not None and plot.suffix.lower() not in PLOT_SUFFIXES:
        raise HtsrError(f"--plot {plot}: the file name must end in .png, .svg or .pdf")
    if metric.value == "alpha_farms" and settings.farms is None:
        raise HtsrError("--metric alpha_farms needs FARMS alphas: add --farms")
    check_output_paths({"-o": output, "--plot": plot, "--cache": cache}, [*run, *([merged] if merged else [])])
    if merged is not None:
        check_source(merged)
    gate_config = _gate_config(metric, alpha_min, alpha_max, max_alpha_drift, mean_alpha_max)
    from htsr_cli.engine.track import track_run  # lazy torch, see app.py

    with layer_progress(quiet, "tracking", "checkpoints") as progress:
        tracked = track_run(run, settings, cache_file=cache, use_cache=not no_cache, merged_base=merged, progress=progress)
    gate_results = None
    if gate_config is not None:
        from htsr_cli.gate.run import evaluate_run

        gate_results = evaluate_run([item.report for item in tracked.checkpoints], gate_config)
    gate_document = None
    if gate_results is not None:
        from htsr_cli.gate.run import run_gate_json

        gate_document = run_gate_json(gate_results, [item.checkpoint.step for item in tracked.checkpoints])
    if output_format is TrackFormat.json:
        emit_text(dumps_json(tracked.to_json(gate_document)), output, quiet)
    elif output_format is TrackFormat.csv:
        emit_text(to_csv([Column(key, key) for key in LAYER_COLUMNS], tracked.layer_rows()), output, quiet)
    else:
        width = table_width(output)
        emit_renderable(Group(_summary_table(tracked, width), _correlation_table(tracked, width)), output, quiet)
    if plot is not None:
        from htsr_cli.render.plots import figure_bytes, missing_glyphs
        from htsr_cli.render.track import LAYER_ROWS_MAX, track_figure
        from htsr_cli.settings import QUALITY_BANDS
        from htsr_cli.io import write_atomic

        unit_kind, units, grid = tracked.alpha_grid(LAYER_ROWS_MAX, metric.value)
        on_alpha_scale = [name for name in tracked.summary_metrics if name != "mean_alpha_weighted"]  # alpha_w is log-scaled
        summary = {name: [item.report.summary.get(name) for item in tracked.checkpoints] for name in on_alpha_scale}
        with missing_glyphs():
            figure = track_figure(f"{tracked.run}: {metric.value} across {len(tracked.checkpoints)} checkpoints",
                                  [item.checkpoint.step for item in tracked.checkpoints], units, grid, summary, unit_kind,
                                  QUALITY_BANDS[tracked.settings.xmin])
            write_atomic(plot, figure_bytes(figure, PLOT_SUFFIXES[plot.suffix.lower()], dpi))
        wrote(plot, quiet)
    if gate_results is not None:
        failures = [(item, result) for item, result in zip(tracked.checkpoints, gate_results) if not result.passed]
        for item, result in failures:
            for violation in result.errors:
                where = f" {printable(violation.layer)}" if violation.layer else ""
                stderr_console.print(f"FAIL step {item.checkpoint.step}{where}: {printable(violation.message)}",
                                     markup=False, highlight=False, soft_wrap=True)
        verdict = "FAIL" if failures else "PASS"
        stderr_console.print(f"gate {verdict}: {len(failures)} of {len(gate_results)} checkpoints break a rule",
                             markup=False, highlight=False, soft_wrap=True)
        if failures:
            raise typer.Exit(1)
