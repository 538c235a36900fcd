"""A report as one self-contained HTML file: summary, an interactive overview chart,
a sortable per-layer table, and each layer's fit diagnostics revealed by clicking it.

    write_atomic("report.html", render_html(report))  # per-layer plots need report.spectra

Everything is inline (the overview as SVG, layer plots as base64 PNG data URIs,
CSS, a small script), so the file opens anywhere without network access.

Every string from a checkpoint or a saved report (layer names, reasons, the
checkpoint, settings) is hostile until escaped: HTML text and attributes go
through `html.escape` (quotes included), CSS classes come only from a fixed
list, no report string is ever placed inside the script, and the overview SVG
is parsed and re-serialised by ElementTree (which escapes text and attributes
and drops comments) before it is inlined. The same report renders to the same bytes.
"""

from __future__ import annotations

import base64
import math
import re
import xml.etree.ElementTree as ElementTree
from html import escape
from typing import Any

from htsr_cli.render.outputs import Column, format_cell
from htsr_cli.render.plots import (
    figure_bytes,
    fit_diagnostics_figure,
    overview_figure,
    overview_layers,
    overview_points,
)
from htsr_cli.results.report import OPTIONAL_FIELDS, LayerResult, Report
from htsr_cli.render.tables import TABLE_COLUMNS, report_columns, quality_class, summary_rows
from htsr_cli.settings import ProgressCallback

HTML_DPI = 80  # small layer PNGs: a 7B model embeds a couple of hundred of them
SVG = "http://www.w3.org/2000/svg"
XLINK = "http://www.w3.org/1999/xlink"
# Characters XML 1.0 forbids; a hostile name may carry them, the SVG may not.
XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; word-break: break-all; }
table { border-collapse: collapse; }
.summary td, .summary th { padding: 2px 12px 2px 0; text-align: left; vertical-align: top; }
.scroll { overflow-x: auto; }
.note { color: #8a5a00; }
#overview svg { height: auto; max-width: 100%; }  /* scaled to the window, never cut at its edge */
#overview [data-layer] { cursor: pointer; }
#overview [data-layer]:hover { opacity: 0.55; }
#layers th, #layers td { padding: 3px 8px; border-bottom: 1px solid #ddd; white-space: nowrap; }
#layers th { position: sticky; top: 0; background: #f4f4f4; cursor: pointer; user-select: none; }
#layers th[aria-sort=ascending]::after { content: " \\25B2"; }
#layers th[aria-sort=descending]::after { content: " \\25BC"; }
#layers td.num { text-align: right; font-variant-numeric: tabular-nums; }
#layers tr.layer.plotted { cursor: pointer; }
#layers tr.layer.plotted:hover, #layers tr.layer.target { background: #eef4fb; }
#layers tr.plot td { background: #fafafa; }
.q-ok { color: #2ca02c; } .q-under-trained { color: #e07000; }
.q-over-trained { color: #d62728; } .q-unknown, .q-other { color: #888; }
"""

# Sorting keeps each layer's plot row with it (one <tbody> per layer); empty cells sort last.
# A click on an overview point opens that layer's plot row and scrolls to it.
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
  var overview = document.getElementById("overview");
  overview.addEventListener("click", function (event) {
    var point = event.target.closest("[data-layer]");
    if (!point) { return; }
    var row = document.getElementById("layer-" + point.getAttribute("data-layer"));
    if (!row) { return; }
    var previous = table.querySelector("tr.layer.target");
    if (previous) { previous.classList.remove("target"); }
    row.classList.add("target");
    if (row.classList.contains("plotted")) { row.nextElementSibling.hidden = false; }
    row.scrollIntoView({block: "start"});
  });
  document.body.setAttribute("data-ready", "1");
})();
"""


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def table_columns(report: Report) -> list[Column]:
    return [Column("index", "#"), *report_columns(TABLE_COLUMNS, report)]


def _sort_value(value: Any) -> str:
    """What a cell sorts by: the full-precision number, a shape's size, or the text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, (list, tuple)):
        try:
            return str(math.prod(value))
        except TypeError:
            return ""
    return str(value)


def _text(value: Any, digits: int | None = None) -> str:
    """Any report value as escaped HTML text (quotes too, so it is safe in attributes)."""
    return escape(format_cell(value, digits), quote=True)


def _layer_body(index: int, layer: LayerResult, columns: list[Column], plot: bytes | None) -> str:
    row = layer.to_json(with_farms=True, groups=OPTIONAL_FIELDS)
    row["index"] = index
    if layer.status != "ok":
        row["quality"] = f"{layer.status}: {layer.reason}"
    cells = []
    for column in columns:
        value = row.get(column.key)
        classes = "num" if column.justify == "right" else ""
        if column.key == "quality":
            classes = quality_class(layer)
        cells.append(
            f'<td class="{classes}" data-value="{escape(_sort_value(value), quote=True)}">'
            f"{_text(value, column.digits)}</td>"
        )
    if plot is None:
        return f'<tbody><tr class="layer" id="layer-{index}">{"".join(cells)}</tr></tbody>'
    image = f'<img alt="fit diagnostics of {_text(layer.name)}" src="{_png_uri(plot)}">'
    return (
        f'<tbody><tr class="layer plotted" id="layer-{index}" title="show or hide the fit diagnostics">'
        f'{"".join(cells)}</tr><tr class="plot" hidden><td colspan="{len(columns)}">{image}</td></tr></tbody>'
    )


def _hover_text(layer: LayerResult, field: str) -> str:
    value = layer.metric(field)
    if value is None:
        return XML_INVALID.sub("?", f"{layer.name}\nno fit: {layer.reason or layer.status}")
    parts = [layer.name, f"{field} {value:.3f}"]
    if field == "alpha":
        parts.append(f"D {format_cell(layer.ks_distance, 3)}   tail {format_cell(layer.tail_size, None)} "
                     f"of {format_cell(layer.num_evals, None)}")
    else:
        parts.append(f"D {format_cell(layer.ks_distance_farms, 3)}")
    return XML_INVALID.sub("?", "\n".join(parts))


def overview_svg(report: Report) -> str:
    """The overview chart as inline SVG; every point carries hover text (layer, alpha, D, tail size)
    and `data-layer`, the index of its row in the layer table."""
    ElementTree.register_namespace("", SVG)
    ElementTree.register_namespace("xlink", XLINK)
    # matplotlib copies label text into XML comments as it is; characters XML forbids must go first.
    svg = XML_INVALID.sub("?", figure_bytes(overview_figure(report), "svg").decode("utf-8"))
    root = ElementTree.fromstring(svg)
    for metadata in root.findall(f"{{{SVG}}}metadata"):
        root.remove(metadata)
    layers = overview_layers(report)
    row_of = {id(layer): index for index, layer in enumerate(report.layers)}
    groups = {group.get("id"): group for group in root.iter(f"{{{SVG}}}g")}
    for gid, field, indices in overview_points(report):
        group = groups.get(gid)
        if group is None:
            continue
        marks = [node for node in group.iter() if node.tag in (f"{{{SVG}}}use", f"{{{SVG}}}path")
                 and node.get("x") is not None]
        for mark, position in zip(marks, indices):
            layer = layers[position]
            mark.set("data-layer", str(row_of[id(layer)]))
            ElementTree.SubElement(mark, f"{{{SVG}}}title").text = _hover_text(layer, field)
    return ElementTree.tostring(root, encoding="unicode")


def _plot_for(report: Report, layer: LayerResult, dpi: int) -> bytes | None:
    spectra = report.spectra.get(layer.name)
    if not layer.analysed or spectra is None:
        return None
    method = report.settings.get("xmin", "ks")
    return figure_bytes(fit_diagnostics_figure(layer, spectra, method, report.checkpoint), "png", dpi)


def render_html(report: Report, dpi: int = HTML_DPI, progress: ProgressCallback | None = None) -> str:
    """The whole report page. Layers whose spectra are in `report.spectra` get a fit-diagnostics
    plot (`dpi` sets its resolution); without spectra the page says how to save them.
    `progress(done, total, layer)` is called as each layer is drawn."""
    columns = table_columns(report)
    summary = "".join(f"<tr><th>{_text(key)}</th><td>{_text(value)}</td></tr>" for key, value in summary_rows(report))
    seconds = format_cell(report.summary.get("seconds"), 2)
    bodies = []
    for index, layer in enumerate(report.layers):
        if progress is not None:
            progress(index, len(report.layers), layer.name)
        bodies.append(_layer_body(index, layer, columns, _plot_for(report, layer, dpi)))
    if progress is not None:
        progress(len(report.layers), len(report.layers), "")
    missing = [layer for layer in report.layers if layer.analysed and layer.name not in report.spectra]
    note = (
        f'<p class="note">{len(missing)} analyzed layers have no fit-diagnostics plot: per-layer plots need '
        "the eigenvalues, saved with <code>htsr analyze CHECKPOINT --save-spectra FILE</code> "
        "(then <code>htsr report REPORT.json --spectra FILE</code>).</p>"
        if missing else ""
    )
    headers = "".join(f"<th>{_text(column.header)}</th>" for column in columns)
    title = _text(f"htsr report: {report.checkpoint}")
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
<table class="summary">{summary}<tr><th>time</th><td><span id="seconds">{_text(seconds)}</span> s</td></tr></table>
<h2>alpha per layer</h2>
<p>Hover over a layer's point (or cell) for its name, alpha, D and tail size; click it to open the layer below.</p>
<div class="scroll" id="overview">{overview_svg(report)}</div>
<h2>layers</h2>
{note}<p>Click a column header to sort; click a layer to show its fit diagnostics.</p>
<div class="scroll">
<table id="layers">
<thead><tr>{headers}</tr></thead>
{chr(10).join(bodies)}
</table>
</div>
<script>{SCRIPT}</script>
</body>
</html>
"""
