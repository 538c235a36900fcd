"""A report as one self-contained HTML file: summary, overview chart, a sortable
per-layer table, and each layer's ESD plot revealed by clicking its row.

    write_atomic("report.html", render_html(report))  # report needs its spectra

Everything is inline (PNGs as base64 data URIs, CSS, a small script), so the
file opens anywhere without network access. Every name from the checkpoint is
HTML-escaped. The same report always renders to the same bytes.
"""

from __future__ import annotations

import base64
import math
from html import escape
from typing import Any

from htsr_cli.outputs import Column, format_cell
from htsr_cli.plots import esd_figure, layer_spectra, overview_figure, png_bytes
from htsr_cli.report import FARMS_FIELDS, LayerResult, Report
from htsr_cli.report_views import TABLE_COLUMNS

HTML_DPI = 80  # small layer PNGs: a 7B model embeds a couple of hundred of them

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; word-break: break-all; }
table { border-collapse: collapse; }
.summary td, .summary th { padding: 2px 12px 2px 0; text-align: left; vertical-align: top; }
.scroll { overflow-x: auto; }
#layers th, #layers td { padding: 3px 8px; border-bottom: 1px solid #ddd; white-space: nowrap; }
#layers th { position: sticky; top: 0; background: #f4f4f4; cursor: pointer; user-select: none; }
#layers th[aria-sort=ascending]::after { content: " \\25B2"; }
#layers th[aria-sort=descending]::after { content: " \\25BC"; }
#layers td.num { text-align: right; font-variant-numeric: tabular-nums; }
#layers tr.layer.plotted { cursor: pointer; }
#layers tr.layer.plotted:hover { background: #eef4fb; }
#layers tr.plot td { background: #fafafa; }
.q-ok { color: #2ca02c; } .q-under-trained { color: #e07000; }
.q-over-trained { color: #d62728; } .q-unknown, .q-other { color: #888; }
"""

# Sorting keeps each layer's plot row with it (one <tbody> per layer); empty cells sort last.
SCRIPT = """
(function () {
  var table = document.getElementById("layers");
  var headers = table.tHead.rows[0].cells;
  function key(body, column) { return body.rows[0].cells[column].getAttribute("data-value"); }
  function sortBy(column) {
    var header = headers[column];
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    for (var i = 0; i < headers.length; i++) { headers[i].removeAttribute("aria-sort"); }
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var bodies = Array.prototype.slice.call(table.tBodies);
    bodies.sort(function (a, b) {
      var x = key(a, column), y = key(b, column);
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var order = (isNaN(x) || isNaN(y)) ? x.localeCompare(y) : Number(x) - Number(y);
      return ascending ? order : -order;
    });
    bodies.forEach(function (body) { table.appendChild(body); });
  }
  Array.prototype.forEach.call(headers, function (header, column) {
    header.addEventListener("click", function () { sortBy(column); });
  });
  table.addEventListener("click", function (event) {
    var row = event.target.closest("tr.layer.plotted");
    if (row) { row.nextElementSibling.hidden = !row.nextElementSibling.hidden; }
  });
  document.body.setAttribute("data-ready", "1");
})();
"""


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def table_columns(report: Report) -> list[Column]:
    columns = [Column("index", "#"), *TABLE_COLUMNS]
    return [column for column in columns if report.has_farms or column.key not in FARMS_FIELDS]


def _sort_value(value: Any) -> str:
    """What a cell sorts by: the full-precision number, a shape's size, or the text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, (list, tuple)):
        return str(math.prod(value))
    return str(value)


def _layer_body(index: int, layer: LayerResult, columns: list[Column], plot: bytes | None) -> str:
    row = layer.to_json(with_farms=True)
    row["index"] = index
    quality = layer.quality or "unknown"
    if layer.status != "ok":
        row["quality"] = f"{layer.status}: {layer.reason}"
    cells = []
    for column in columns:
        value = row.get(column.key)
        classes = "num" if column.justify == "right" else ""
        if column.key == "quality":
            classes = f"q-{quality}" if layer.status == "ok" else "q-other"
        cells.append(
            f'<td class="{classes}" data-value="{escape(_sort_value(value))}">'
            f"{escape(format_cell(value, column.digits))}</td>"
        )
    if plot is None:
        return f'<tbody><tr class="layer">{"".join(cells)}</tr></tbody>'
    image = f'<img alt="ESD of {escape(layer.name)}" src="{_png_uri(plot)}">'
    return (
        f'<tbody><tr class="layer plotted" title="show or hide the ESD plot">{"".join(cells)}</tr>'
        f'<tr class="plot" hidden><td colspan="{len(columns)}">{image}</td></tr></tbody>'
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{number} {quality}" for quality, number in counts.items())


def _summary_rows(report: Report) -> list[tuple[str, str]]:
    settings, summary = report.settings, report.summary
    rows = [
        ("checkpoint", report.checkpoint),
        ("htsr", report.htsr_version),
        ("xmin", f"{settings['xmin']} ({settings.get('xmin_candidates', 'exact')} candidates)"),
        ("precision", f"{settings['precision']} on {settings['device']}"),
        ("conv scale", format_cell(settings["conv_scale"], None)),
        ("min eigenvalues", format_cell(settings["min_evals"], None)),
        ("layer filter", format_cell(settings.get("layers"), None)),
    ]
    farms = settings.get("farms")
    if farms:
        rows.append(("FARMS", f"window {farms['window']}, q {farms['q']}, steps {farms['steps']}"))
    rows += [
        ("layers", f"{summary['analyzed']} of {summary['layers']} analysed, "
                   f"{summary['skipped']} skipped, {summary['failed']} failed"),
        ("alpha", f"mean {format_cell(summary['mean_alpha'], 3)}, median {format_cell(summary['median_alpha'], 3)}, "
                  f"parameter-weighted {format_cell(summary['weighted_alpha'], 3)}"),
        ("mean alpha_weighted", format_cell(summary.get("mean_alpha_weighted"), 3)),
        ("quality", _counts(summary["quality_counts"])),
    ]
    if farms:
        rows += [
            ("alpha_farms", f"mean {format_cell(summary.get('mean_alpha_farms'), 3)}, "
                            f"median {format_cell(summary.get('median_alpha_farms'), 3)}, "
                            f"parameter-weighted {format_cell(summary.get('weighted_alpha_farms'), 3)}"),
            ("quality (FARMS)", _counts(summary.get("quality_counts_farms", {}))),
        ]
    return rows


def render_html(report: Report, dpi: int = HTML_DPI) -> str:
    """The whole report page; analysed layers need their spectra in `report.spectra`.

    `dpi` sets the resolution of the per-layer ESD plots.
    """
    columns = table_columns(report)
    summary = "".join(f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>" for key, value in _summary_rows(report))
    seconds = format_cell(report.summary.get("seconds"), 2)
    bodies = "\n".join(
        _layer_body(
            index, layer, columns,
            png_bytes(esd_figure(layer, layer_spectra(report, layer)), dpi) if layer.analysed else None,
        )
        for index, layer in enumerate(report.layers)
    )
    headers = "".join(f"<th>{escape(column.header)}</th>" for column in columns)
    overview = _png_uri(png_bytes(overview_figure(report)))  # one image: full resolution
    title = escape(f"htsr report: {report.checkpoint}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{title}</h1>
<table class="summary">{summary}<tr><th>time</th><td><span id="seconds">{escape(seconds)}</span> s</td></tr></table>
<h2>alpha per layer</h2>
<div class="scroll"><img class="overview" alt="alpha per layer" src="{overview}"></div>
<h2>layers</h2>
<p>Click a column header to sort; click a layer to show its ESD plot.</p>
<div class="scroll">
<table id="layers">
<thead><tr>{headers}</tr></thead>
{bodies}
</table>
</div>
<script>{SCRIPT}</script>
</body>
</html>
"""
