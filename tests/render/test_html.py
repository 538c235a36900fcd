"""The HTML report: one self-contained page, its layer table and plots, checked in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from html import escape

import pytest
import torch

from htsr_cli.engine.pipeline import analyze
from htsr_cli.results.report import LayerSpectra
from htsr_cli.render.html import overview_svg, render_html
from htsr_cli.render.outputs import format_cell
from htsr_cli.results.report import Report

STATE = {
    "blocks.0.q.weight": torch.randn(40, 24, generator=torch.Generator().manual_seed(1)),
    "blocks.0.<b>&\"odd\".weight": torch.randn(24, 40, generator=torch.Generator().manual_seed(2)) ** 3,
    "blocks.1.ortho.weight": torch.eye(16),  # fit fails: a row without alpha, but with a plot
    "tiny.weight": torch.randn(5, 40),  # skipped: a row with neither
}
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
]


@pytest.fixture(scope="module")
def report():
    return analyze(STATE, keep_spectra=True)


@pytest.fixture(scope="module")
def page(report) -> str:
    return render_html(report)


def test_page_is_self_contained(page):
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.IGNORECASE)
    assert links, "expected embedded images"
    # PNGs inline, and the SVG's markers refer to its own definitions
    assert all(link.startswith(("data:image/png;base64,", "#")) for link in links)
    assert all(url.startswith("#") for url in re.findall(r"url\(([^)]*)\)", page))
    assert not re.search(r"""\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, flags=re.IGNORECASE)
    assert "<script src" not in page and "<link" not in page and "@import" not in page


def test_page_lists_every_layer_with_its_alpha_and_escapes_names(report, page):
    assert [layer.status for layer in report.layers] == ["ok", "ok", "fit-failed", "skipped"]
    for layer in report.layers:
        assert f">{escape(layer.name)}</td>" in page
    for layer in report.layers[:2]:
        assert f'data-value="{layer.alpha!r}">{format_cell(layer.alpha, 3)}</td>' in page
    assert "<b>" not in page and "&lt;b&gt;&amp;&quot;odd&quot;" in page
    # one fit-diagnostics plot for each analysed layer (fit failed included); the overview is inline SVG
    assert page.count('<tr class="plot" hidden>') == 3
    assert page.count("data:image/png;base64,") == 3
    assert page.count("<svg ") == 1
    assert "fit-failed: no valid power-law fit" in page and "skipped: 5 eigenvalues" in page


def dump_dom(html_path) -> tuple[str, str]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium) to open the page headless")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", html_path.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def test_page_runs_in_headless_chromium_without_console_errors(page, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(page)
    dom, log = dump_dom(path)
    # The page's script marks <body> as its last step: a script error leaves it unmarked.
    assert re.search(r'<body[^>]*data-ready="1"', dom)
    assert '<table id="layers">' in dom
    # Chromium logs every console message (errors, uncaught exceptions) as a CONSOLE line.
    assert not [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def test_clicking_headers_sorts_and_clicking_rows_shows_plots(report, page, tmp_path):
    headers = re.findall(r"<th>([^<]*)</th>", page.split('<table id="layers">')[1])
    alpha_column = headers.index("alpha")
    clicks = (
        f'<script>document.querySelectorAll("#layers th")[{alpha_column}].click();'
        f'document.querySelectorAll("#layers th")[{alpha_column}].click();'
        'document.querySelector("#layers tr.layer.plotted").click();</script></body>'
    )
    path = tmp_path / "clicked.html"
    path.write_text(page.replace("</body>", clicks))
    dom, _ = dump_dom(path)
    rows = re.findall(r'<tr class="layer[^"]*"[^>]*><td[^>]*data-value="(\d+)"', dom)
    # second click: alpha descending; layers without alpha stay last
    by_alpha = sorted(range(2), key=lambda i: -report.layers[i].alpha)
    assert [int(row) for row in rows] == [*by_alpha, 2, 3]
    assert 'aria-sort="descending">alpha</th>' in dom
    assert dom.count('<tr class="plot">') == 1 and dom.count('<tr class="plot" hidden="">') == 2


def test_overview_points_carry_hover_text_and_open_their_layer(report, page, tmp_path):
    svg = page.split('<div class="scroll" id="overview">')[1].split("</div>")[0]
    points = re.findall(r'<use [^>]*data-layer="(\d+)"[^>]*><title>([^<]*)</title>', svg)
    fitted = [(i, layer) for i, layer in enumerate(report.layers) if layer.alpha is not None]
    assert sorted(int(index) for index, _ in points) == [0, 1, 2]  # the failed fit too, as a cross
    for index, layer in fitted:
        title = dict(points)[str(index)]
        assert title == escape(
            f"{layer.name}\nalpha {layer.alpha:.3f}\nD {layer.ks_distance:.3f}   tail {layer.tail_size} of {layer.num_evals}",
            quote=False,
        )
    assert dict(points)["2"].startswith("blocks.1.ortho\nno fit: no valid power-law fit")
    clicks = '<script>document.querySelector("#overview [data-layer=\'1\']").dispatchEvent(new MouseEvent("click", {bubbles: true}));</script></body>'
    path = tmp_path / "point.html"
    path.write_text(page.replace("</body>", clicks))
    dom, _ = dump_dom(path)
    assert re.search(r'<tr class="layer plotted target" id="layer-1"', dom)
    assert dom.count('<tr class="plot">') == 1  # that layer's plot opened, no other


PAYLOADS = [
    '"><img src=x onerror="document.documentElement.setAttribute(\'data-xss\',\'img\')">',
    "</td></tr></table><script>document.documentElement.setAttribute('data-xss','script')</script>",
    "' onmouseover='document.documentElement.setAttribute(\"data-xss\",\"attr\")' x='",
    "--><svg onload=\"document.documentElement.setAttribute('data-xss','svg')\">",
    "]]></title><script>document.documentElement.setAttribute('data-xss','title')</script>",
    "\x1b[31m\x00\x07</script><script>document.documentElement.setAttribute('data-xss','js')</script>",
]


def parsed_markup(page: str) -> tuple[list[str], set[str]]:
    """Every tag and every attribute name an HTML parser finds in the page."""
    from html.parser import HTMLParser

    tags, attributes = [], set()

    class Collector(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append(tag)
            attributes.update(name for name, _ in attrs)

    Collector().feed(page)
    return tags, attributes


def hostile_report(tmp_path) -> Report:
    """A report whose every string field carries a script-injection payload, with spectra for its plots."""
    from htsr_cli.results.report import LayerResult, summarize

    g = torch.Generator().manual_seed(5)
    layers, spectra = [], {}
    for index, payload in enumerate(PAYLOADS):
        esd, _ = torch.sort(torch.rand(40, generator=g, dtype=torch.float64) ** -1.5)
        layer = LayerResult(
            name=f"blocks.{index}.{payload}", tensor=f"{payload}.weight", kind=payload, shape=[8, 5],
            block=f"blocks.{index}{payload}", params=40, storage=payload, status="ok", reason=payload,
            num_evals=40, alpha=[1.5, 3.0, 7.0][index % 3], xmin=float(esd[10]), ks_distance=0.1,
            tail_size=30, quality=["over-trained", "ok", "under-trained"][index % 3],
        )
        layers.append(layer)
        spectra[layer.name] = LayerSpectra(esd)
    layers.append(LayerResult(name=PAYLOADS[0] + "skipped", tensor="t", kind="linear", shape=[2, 2], block=None,
                              params=4, status=PAYLOADS[1], reason=PAYLOADS[2]))
    settings = {key: PAYLOADS[i % len(PAYLOADS)] for i, key in enumerate(
        ("xmin", "xmin_candidates", "device", "precision", "conv_scale", "min_evals", "layers"))}
    settings["farms"] = None
    summary = summarize(layers, 1.0, with_farms=False)
    for index, layer in enumerate(layers[:-1]):
        if index % 2:
            layer.quality = PAYLOADS[index]  # an enum field a crafted report fills with markup
    report = Report(checkpoint=PAYLOADS[1], settings=settings, layers=layers, summary=summary, htsr_version=PAYLOADS[3])
    report.spectra = spectra
    return report


def test_no_string_from_a_report_runs_script_in_chromium(tmp_path):
    path = tmp_path / "hostile.html"
    path.write_text(render_html(hostile_report(tmp_path)))
    page = path.read_text()
    tags, attributes = parsed_markup(page)
    assert tags.count("script") == 1  # ours; every injected one is escaped text
    assert tags.count("svg") == 1 and tags.count("img") == len(PAYLOADS)  # the overview and one plot per layer
    # only the attributes the page itself writes: no event handler, nothing a payload named
    assert attributes <= {
        "alt", "charset", "class", "clip-path", "colspan", "content", "d", "data-layer", "data-value", "height",
        "hidden", "id", "lang", "name", "src", "style", "title", "transform", "type", "version", "viewbox",
        "width", "x", "xlink:href", "xmlns", "xmlns:xlink", "y",
    }
    assert set(tags) <= {
        "body", "clippath", "code", "defs", "div", "g", "h1", "h2", "head", "html", "img", "meta", "p", "path",
        "rect", "script", "span", "style", "svg", "table", "tbody", "td", "th", "thead", "title", "tr", "use",
    }
    dom, log = dump_dom(path)
    assert re.search(r'<body[^>]*data-ready="1"', dom), "the page's own script must still run"
    assert "data-xss=" not in dom.split("<body")[0] and not re.search(r'<html[^>]*data-xss', dom)
    for payload in PAYLOADS[:3]:
        assert escape(payload) in page  # shown as text, not dropped
    # hover over every overview point: no handler from a payload may fire
    hover = ('<script>document.querySelectorAll("#overview [data-layer], td").forEach(function (e) {'
             'e.dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));'
             'e.dispatchEvent(new MouseEvent("click", {bubbles: true})); });</script></body>')
    path.write_text(page.replace("</body>", hover))
    dom, _ = dump_dom(path)
    assert not re.search(r'<html[^>]*data-xss', dom)
    assert "data-xss" not in dom.replace(escape("data-xss"), "").replace("&#x27;data-xss&#x27;", "").split("<body")[0]


def test_a_block_grid_overview_keeps_hover_text_and_a_link_per_layer():
    from tests.render.test_plots import LLAMA_KINDS, many_layers

    report = many_layers(30, LLAMA_KINDS)  # 212 layers: the overview is a grid of cells
    svg = overview_svg(report)
    cells = re.findall(r'<use [^>]*data-layer="(\d+)"[^>]*><title>([^<]*)</title>', svg)
    assert sorted(int(index) for index, _ in cells) == list(range(len(report.layers)))
    titles = dict(cells)
    assert titles["1"].startswith("model.layers.0.self_attn.q_proj\nalpha ")
    assert titles["22"].startswith("model.layers.3.self_attn.q_proj\nno fit")  # the failed fit has its cell too
