"""htsr gate: pass/fail HT-SR rules for CI (exit 0 pass, 1 a rule violated, 2 usage or input error)
(examples in the command's help)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from htsr_cli.cli._analysis_options import analysis_options
from htsr_cli.cli._options import (
    CheckpointOrReportArg,
    Metric,
    OutputOpt,
    QuietOpt,
)
from htsr_cli.cli._output import emit_renderable, emit_text, wrote
from htsr_cli.cli._reports import check_metric_available, reports_from
from htsr_cli.errors import HtsrError
from htsr_cli.gate.config import check_drift_flag, find_pyproject, parse_max_flagged, resolve_config
from htsr_cli.gate.formats import gate_github, gate_json, gate_markdown, gate_text
from htsr_cli.gate.junit import gate_junit
from htsr_cli.gate.rules import evaluate
from htsr_cli.io import check_output_paths, write_atomic
from htsr_cli.results.documents import dumps_json
from htsr_cli.results.report import is_report_file
from htsr_cli.settings import AnalyzeSettings
from htsr_cli.checkpoints.sources import check_source


class GateFormat(str, Enum):
    text = "text"
    json = "json"
    github = "github"
    markdown = "markdown"


def append_step_summary(markdown: str) -> None:
    """GitHub Actions shows $GITHUB_STEP_SUMMARY on the run page; other steps write to it too, so append."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(markdown + "\n")
    except OSError as error:
        raise HtsrError(f"GITHUB_STEP_SUMMARY {path}: cannot append the summary ({error.strerror})") from None


@analysis_options
def gate(
    source: CheckpointOrReportArg,
    config: Annotated[Optional[Path], typer.Option("--config", help="A TOML file with a tool.htsr.gate table (e.g. a pyproject.toml).", dir_okay=False, show_default="nearest pyproject.toml")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Report JSON (or checkpoint) to measure alpha drift against (max_alpha_drift: 0.5 for ks, 0.1 for median, unless set).", show_default="none")] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Also write a JUnit XML file: one testcase per rule and layer.", dir_okay=False, show_default="none")] = None,
    output_format: Annotated[GateFormat, typer.Option("--format", "-f", help="text for people, json (htsr.gate/1), github (workflow annotations), markdown.")] = GateFormat.text,
    output: OutputOpt = None,
    metric: Annotated[Optional[Metric], typer.Option("--metric", help="Which alpha the rules read (config: metric).", show_default="alpha")] = None,
    alpha_min: Annotated[Optional[float], typer.Option("--alpha-min", help="Lowest allowed alpha per layer (config: alpha_min).")] = None,
    alpha_max: Annotated[Optional[float], typer.Option("--alpha-max", help="Highest allowed alpha per layer (config: alpha_max).")] = None,
    max_flagged: Annotated[Optional[str], typer.Option("--max-flagged", help="Layers allowed outside alpha-min..alpha-max (default: the xmin rule's quality band, 2..6 for ks): a count (3) or a fraction (0.1) (config: max_flagged).")] = None,
    mean_alpha_max: Annotated[Optional[float], typer.Option("--mean-alpha-max", help="Highest allowed mean alpha (config: mean_alpha_max).")] = None,
    max_alpha_drift: Annotated[Optional[float], typer.Option("--max-alpha-drift", help="Largest allowed |alpha - baseline alpha| per layer; needs --baseline (config: max_alpha_drift).", show_default="0.5 (ks), 0.1 (median) with --baseline")] = None,
    require_layers: Annotated[Optional[bool], typer.Option("--require-layers/--no-require-layers", help="Fail on any skipped or failed layer (config: require_layers).", show_default=False)] = None,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Pass when no layer has an alpha to check; by default that fails (config: allow_empty).")] = False,
    allow_failed: Annotated[bool, typer.Option("--allow-failed", help="Layers whose analysis or fit failed (NaN weights, no fit) only warn; by default they fail (config: allow_failed).")] = False,
    settings: AnalyzeSettings = AnalyzeSettings(),
    quiet: QuietOpt = False,
) -> None:
    r"""Check HT-SR rules on a checkpoint or a saved report and exit 1 if any is violated.

    Rules come from \[tool.htsr.gate] in the nearest pyproject.toml (searched from
    the current directory up) or --config, and flags override them. Keys: metric,
    alpha_min, alpha_max, max_flagged, mean_alpha_max, max_alpha_drift,
    require_layers, allow_empty, allow_failed. Every gate fails on a broken fit (a
    layer whose analysis or fit failed); with --baseline it also fails on a layer
    whose alpha moved more than max_alpha_drift (0.5 for ks, 0.1 for median,
    0.5 for peak, unless set) from the baseline's, matched by name (a layer that lost its alpha fails; a layer on one
    side only is a warning). A max_alpha_drift from the config without --baseline
    is reported as not checked. These defaults pass trained models and catch
    damaged ones (docs/gate.md); the quality band is opt-in: max_flagged counts
    layers outside alpha_min..alpha_max, whose unset ends are the band of the
    report's xmin rule (ks 2..6, median 1.6..2.6, peak 1.7..4); alpha_min/alpha_max
    alone fail every layer outside them. When GITHUB_STEP_SUMMARY is set, a
    markdown summary is appended to it.

    [bold]Examples:[/bold]
      htsr gate model.safetensors
      htsr gate report.json --alpha-max 5 --max-flagged 2 --junit htsr-junit.xml
      htsr gate model.safetensors --baseline main-report.json --format github
      htsr gate report.json --format json -o verdict.json
    """
    overrides = {
        "metric": metric.value if metric else None,
        "alpha_min": alpha_min,
        "alpha_max": alpha_max,
        "max_flagged": parse_max_flagged(max_flagged) if max_flagged is not None else None,
        "mean_alpha_max": mean_alpha_max,
        "max_alpha_drift": max_alpha_drift,
        "require_layers": require_layers,
        "allow_empty": True if allow_empty else None,
        "allow_failed": True if allow_failed else None,
    }
    rules = resolve_config(config, Path.cwd(), overrides)
    sources = [source] if baseline is None else [source, baseline]
    for named in sources:
        if not is_report_file(named):
            check_source(named)
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY") or None
    check_output_paths(
        {"-o": output, "--junit": junit, "GITHUB_STEP_SUMMARY": summary_file},
        [*sources, config if config is not None else find_pyproject(Path.cwd())],
    )
    check_drift_flag(max_alpha_drift, baseline is not None)  # before a possibly long analysis
    check_metric_available(rules.metric, settings.farms is not None, [source])
    report, *reference = reports_from(sources, settings, quiet)
    result = evaluate(report, rules, reference[0] if reference else None)
    if junit is not None:
        write_atomic(junit, gate_junit(result))
        wrote(junit, quiet)
    append_step_summary(gate_markdown(result))
    if output_format is GateFormat.text:
        emit_renderable(gate_text(result), output, quiet)
    elif output_format is GateFormat.json:
        emit_text(dumps_json(gate_json(result)), output, quiet)
    elif output_format is GateFormat.github:
        emit_text(gate_github(result), output, quiet, commands=True)
    else:
        emit_text(gate_markdown(result), output, quiet)
    if not result.passed:
        raise typer.Exit(1)
