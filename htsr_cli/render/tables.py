"""The analyze report in every output format: table, JSON, CSV, markdown.

The table and markdown round numbers for reading; CSV and JSON carry full precision.
"""

from __future__ import annotations

from html import escape
from typing import Any

from rich.console import Group

from htsr_cli.errors import HtsrError
from htsr_cli.render.outputs import Column, format_cell, markdown_code, to_csv, to_markdown
from htsr_cli.results.report import FARMS_FIELDS, OPTIONAL_FIELDS, LayerResult, Report
from htsr_cli.render.terminal import terminal_table

QUALITY_STYLES = {"ok": "green", "under-trained": "yellow", "over-trained": "red", "unknown": "dim"}
QUALITY_CSS = {"ok": "#2ca02c", "under-trained": "#e07000", "over-trained": "#d62728", "unknown": "#888"}

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
    # Secondary: shown only for reports analysed with --mp-fit / --randomize / --detx.
    Column("num_spikes", "spikes"),
    Column("mp_softrank", "mp_softrank", 3),
    Column("rand_distance", "rand_dist", 3),
    Column("rand_num_spikes", "traps"),
    Column("detx_num", "detX_num"),
    Column("quality", "quality", justify="left"),
]

CSV_COLUMNS = [
    Column(key, key)
    for key in (
        "name", "tensor", "kind", "shape", "block", "params", "storage", "status", "reason", "num_evals",
        "alpha", "xmin", "ks_distance", "sigma", "tail_size", "lambda_max", "log_spectral_norm",
        "log_norm", "stable_rank", "alpha_weighted", "log_alpha_norm", "entropy", "quality",
        "eigensolver_redone", *FARMS_FIELDS, *(key for keys in OPTIONAL_FIELDS.values() for key in keys),
    )
]


# A narrow terminal hides these first (the first listed goes first); layer,
# alpha and quality always stay.
ALWAYS_SHOWN = ("name", "alpha", "quality")
DROP_ORDER = (
    "detx_num", "rand_distance", "mp_softrank", "num_spikes", "rand_num_spikes", "stable_rank", "alpha_weighted", "lambda_max", "xmin", "ks_distance",
    "num_evals", "shape", "kind", "alpha_farms",
)


def report_columns(columns: list[Column], report: Report) -> list[Column]:
    """The columns of the passes the report was analysed with (FARMS, --fit tpl, --fix-fingers, --mp-fit,
    --randomize, --detx)."""
    absent = set() if report.has_farms else set(FARMS_FIELDS)
    for group, keys in OPTIONAL_FIELDS.items():
        if group not in report.field_groups:
            absent |= set(keys)
    return [column for column in columns if column.key not in absent]


def selectable_columns() -> dict[str, Column]:
    """What `--columns` accepts: the table's headers and every report field by its JSON key."""
    chosen: dict[str, Column] = {}
    for column in TABLE_COLUMNS:
        chosen[column.header] = chosen[column.key] = column
    for column in CSV_COLUMNS:
        if column.key not in chosen:
            text = column.key in ("tensor", "block", "storage", "status", "reason")
            chosen[column.key] = Column(column.key, column.key, None if text else 4, "left" if text else "right")
    return chosen


def parse_columns(text: str) -> list[Column]:
    """`--columns layer,alpha,entropy`: the named columns, in that order."""
    known = selectable_columns()
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise HtsrError("--columns needs at least one column name")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise HtsrError(f"--columns: unknown column {unknown[0]!r} (known: {', '.join(known)})")
    return list({known[name].key: known[name] for name in names}.values())


def _row(layer: LayerResult) -> dict[str, Any]:
    row = layer.to_json(with_farms=True, groups=OPTIONAL_FIELDS)
    if layer.status != "ok":
        row["quality"] = f"{layer.status}: {layer.reason}"
    return row


def summary_line(report: Report) -> str:
    s = report.summary
    parts = [
        f"{s['analyzed']}/{s['layers']} layers analyzed",
        f"{s['skipped']} skipped",
        f"{s['failed']} failed",
        f"mean alpha {format_cell(s['mean_alpha'], 3)}",
        f"median {format_cell(s['median_alpha'], 3)}",
        f"param-weighted mean alpha {format_cell(s['weighted_alpha'], 3)}",
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


def settings_note(report: Report) -> str:
    settings = report.settings
    note = f"xmin={settings['xmin']} ({settings.get('xmin_candidates', 'exact')} candidates), {precision_note(report)}"
    if settings.get("farms"):
        farms = settings["farms"]
        note += f", FARMS window {farms['window']} q {farms['q']} steps {farms['steps']}"
    return note


def report_table(report: Report, width: int | None = None, columns: list[Column] | None = None) -> Group:
    """The terminal table; `width` fits it to a terminal that wide (None: every column, names whole).

    With `columns` (from `--columns`) exactly those are shown, names still shortened to fit.
    """
    return terminal_table(
        columns or report_columns(TABLE_COLUMNS, report),
        [_row(layer) for layer in report.layers],
        width,
        title=f"htsr: {report.checkpoint}",
        notes=[settings_note(report)],
        summary=summary_line(report),
        keep=ALWAYS_SHOWN,
        drop_order=() if columns else DROP_ORDER,
        style=_style,
        fold_constants=not columns,
        hint="--columns to choose; piped output shows all",
    )


def report_markdown(report: Report, columns: list[Column] | None = None) -> str:
    columns = columns or report_columns(TABLE_COLUMNS, report)
    return f"## htsr: {markdown_code(report.checkpoint)}\n\n" + to_markdown(columns, [_row(l) for l in report.layers]) + f"\n{summary_line(report)}\n"


def report_csv(report: Report, columns: list[Column] | None = None) -> str:
    columns = [Column(c.key, c.key) for c in columns] if columns else report_columns(CSV_COLUMNS, report)
    return to_csv(columns, [layer.to_json(with_farms=True, groups=OPTIONAL_FIELDS) for layer in report.layers])


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{number} {quality}" for quality, number in counts.items())


def summary_rows(report: Report) -> list[tuple[str, str]]:
    """The report's settings and summary as (label, text) pairs, for HTML views."""
    settings, summary = report.settings, report.summary
    rows = [
        ("checkpoint", str(report.checkpoint)),
        ("htsr", str(report.htsr_version)),
        ("xmin", f"{settings.get('xmin')} ({settings.get('xmin_candidates', 'exact')} candidates)"),
        ("precision", f"{precision_note(report)} on {settings.get('device')}"),
        ("conv scale", format_cell(settings.get("conv_scale"), None)),
        ("min eigenvalues", format_cell(settings.get("min_evals"), None)),
        ("layer filter", format_cell(settings.get("layers"), None)),
    ]
    farms = settings.get("farms")
    if farms:
        rows.append(("FARMS", f"window {farms.get('window')}, q {farms.get('q')}, steps {farms.get('steps')}"))
    rows += [
        ("layers", f"{summary['analyzed']} of {summary['layers']} analyzed, "
                   f"{summary['skipped']} skipped, {summary['failed']} failed"),
        ("alpha", f"mean {format_cell(summary['mean_alpha'], 3)}, median {format_cell(summary['median_alpha'], 3)}, "
                  f"param-weighted mean {format_cell(summary['weighted_alpha'], 3)}"),
        ("mean alpha_weighted", format_cell(summary.get("mean_alpha_weighted"), 3)),
        ("quality", _counts(summary["quality_counts"])),
    ]
    if farms:
        rows += [
            ("alpha_farms", f"mean {format_cell(summary.get('mean_alpha_farms'), 3)}, "
                            f"median {format_cell(summary.get('median_alpha_farms'), 3)}, "
                            f"param-weighted mean {format_cell(summary.get('weighted_alpha_farms'), 3)}"),
            ("quality (FARMS)", _counts(summary.get("quality_counts_farms", {}))),
        ]
    return rows


def quality_class(layer: LayerResult) -> str:
    """The CSS class of a layer's quality cell; only known names ever reach a class attribute."""
    if layer.status == "ok" and layer.quality in QUALITY_STYLES:
        return f"q-{layer.quality}"
    return "q-other"


def report_html(report: Report) -> str:
    """Summary and layer table as an HTML fragment (Jupyter's `_repr_html_`); every string escaped."""
    summary = "".join(
        f"<tr><th style='text-align:left'>{escape(key)}</th><td style='text-align:left'>{escape(value)}</td></tr>"
        for key, value in summary_rows(report)
    )
    columns = report_columns(TABLE_COLUMNS, report)
    header = "".join(f"<th>{escape(column.header)}</th>" for column in columns)
    body = []
    for layer in report.layers:
        row = _row(layer)
        cells = []
        for column in columns:
            text = escape(format_cell(row.get(column.key), column.digits))
            if column.key == "quality":
                colour = QUALITY_CSS.get(quality_class(layer)[2:], QUALITY_CSS["unknown"])
                text = f"<span style='color:{colour}'>{text}</span>"
            align = "right" if column.justify == "right" else "left"
            cells.append(f"<td style='text-align:{align}'>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f"<div><b>htsr report: {escape(str(report.checkpoint))}</b>"
        f"<table>{summary}</table>"
        f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )
