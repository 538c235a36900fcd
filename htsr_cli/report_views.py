"""The analyze report in every output format: table, JSON, CSV, markdown.

The table and markdown round numbers for reading; CSV and JSON carry full precision.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text

from htsr_cli.outputs import Column, format_cell, markdown_code, to_csv, to_markdown, to_rich_table
from htsr_cli.report import FARMS_FIELDS, LayerResult, Report

REPORT_FORMATS = ("table", "json", "csv", "markdown")

QUALITY_STYLES = {"ok": "green", "under-trained": "yellow", "over-trained": "red", "unknown": "dim"}

TABLE_COLUMNS = [
    Column("name", "layer", justify="left"),
    Column("kind", "kind", justify="left"),
    Column("shape", "shape"),
    Column("num_evals", "#evals"),
    Column("alpha", "alpha", 3),
    Column("alpha_farms", "alpha_farms", 3),
    Column("xmin", "xmin", 4),
    Column("ks_distance", "D", 3),
    Column("lambda_max", "lambda_max", 3),
    Column("alpha_weighted", "alpha_w", 3),
    Column("stable_rank", "stable_rank", 2),
    Column("quality", "quality", justify="left"),
]

CSV_COLUMNS = [
    Column(key, key)
    for key in (
        "name", "tensor", "kind", "shape", "block", "params", "storage", "status", "reason", "num_evals",
        "alpha", "xmin", "ks_distance", "sigma", "tail_size", "lambda_max", "log_spectral_norm",
        "log_norm", "stable_rank", "alpha_weighted", "log_alpha_norm", "entropy", "quality",
        "eigensolver_redone", *FARMS_FIELDS,
    )
]


def _columns(columns: list[Column], report: Report) -> list[Column]:
    if report.has_farms:
        return columns
    return [column for column in columns if column.key not in FARMS_FIELDS]


def _row(layer: LayerResult) -> dict[str, Any]:
    row = layer.to_json(with_farms=True)
    if layer.status != "ok":
        row["quality"] = f"{layer.status}: {layer.reason}"
    return row


def summary_line(report: Report) -> str:
    s = report.summary
    parts = [
        f"{s['analyzed']}/{s['layers']} layers analysed",
        f"{s['skipped']} skipped",
        f"{s['failed']} failed",
        f"mean alpha {format_cell(s['mean_alpha'], 3)}",
        f"median {format_cell(s['median_alpha'], 3)}",
        f"weighted {format_cell(s['weighted_alpha'], 3)}",
    ]
    if report.has_farms:
        parts.append(f"mean alpha_farms {format_cell(s.get('mean_alpha_farms'), 3)}")
    counts = s["quality_counts"]
    parts.append(", ".join(f"{counts[q]} {q}" for q in ("ok", "under-trained", "over-trained") if q in counts))
    parts.append(f"{s['seconds']:.2f} s on {report.settings['device']}")
    return " | ".join(parts)


def precision_note(report: Report) -> str:
    """`mixed (float32 Gram, float64 eigensolver)`, with the float32 guard's redone count in float32 mode."""
    settings = report.settings
    if "gram_precision" not in settings:  # saved before these fields existed
        return str(settings["precision"])
    note = f"{settings['precision']} ({settings['gram_precision']} Gram, {settings['eigensolver_precision']} eigensolver"
    if settings["eigensolver_precision"] == "float32":
        redone = sum(1 for layer in report.layers if layer.eigensolver_redone)
        note += f"; {redone} redone in float64"
    return note + ")"


def _style(row: dict[str, Any], key: str) -> str | None:
    if key != "quality":
        return None
    quality = row.get("quality") or "unknown"
    return QUALITY_STYLES.get(quality, "magenta")


def report_table(report: Report) -> Group:
    settings = report.settings
    title = f"htsr: {report.checkpoint}"
    note = f"xmin={settings['xmin']} ({settings.get('xmin_candidates', 'exact')} candidates), {precision_note(report)}"
    if settings.get("farms"):
        farms = settings["farms"]
        note += f", FARMS window {farms['window']} q {farms['q']} steps {farms['steps']}"
    table = to_rich_table(
        _columns(TABLE_COLUMNS, report),
        [_row(layer) for layer in report.layers],
        title=title,
        style=_style,
        caption=note,
    )
    return Group(table, Text(summary_line(report), style="bold"))


def report_markdown(report: Report) -> str:
    columns = _columns(TABLE_COLUMNS, report)
    return f"## htsr: {markdown_code(report.checkpoint)}\n\n" + to_markdown(columns, [_row(l) for l in report.layers]) + f"\n{summary_line(report)}\n"


def report_csv(report: Report) -> str:
    return to_csv(_columns(CSV_COLUMNS, report), [layer.to_json(with_farms=True) for layer in report.layers])
