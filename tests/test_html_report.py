"""`htsr report`: one self-contained HTML file, the same from a checkpoint or a saved report."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from html import escape

import pytest
import torch
from safetensors.torch import save_file

from htsr_cli.analysis import analyze
from htsr_cli.html_report import render_html
from htsr_cli.outputs import format_cell

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


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(STATE, path)
    return path


def without_timing(page: str) -> str:
    return re.sub(r'<span id="seconds">[^<]*</span>', "", page)


def test_page_is_self_contained(page):
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.IGNORECASE)
    assert links, "expected embedded images"
    assert all(link.startswith("data:image/png;base64,") for link in links)
    assert not re.search(r"""\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, flags=re.IGNORECASE)
    assert "<script src" not in page and "<link" not in page and "@import" not in page


def test_page_lists_every_layer_with_its_alpha_and_escapes_names(report, page):
    assert [layer.status for layer in report.layers] == ["ok", "ok", "fit-failed", "skipped"]
    for layer in report.layers:
        assert f">{escape(layer.name)}</td>" in page
    for layer in report.layers[:2]:
        assert f'data-value="{layer.alpha!r}">{format_cell(layer.alpha, 3)}</td>' in page
    assert "<b>" not in page and "&lt;b&gt;&amp;&quot;odd&quot;" in page
    # one ESD plot for each analysed layer (fit failed included), plus the overview
    assert page.count('<tr class="plot" hidden>') == 3
    assert page.count("data:image/png;base64,") == 4
    assert "fit-failed: no valid power-law fit" in page and "skipped: 5 eigenvalues" in page


def test_report_from_saved_json_and_spectra_equals_report_from_checkpoint(cli, checkpoint, tmp_path):
    direct, saved, explicit = tmp_path / "direct.html", tmp_path / "saved.html", tmp_path / "explicit.html"
    assert cli("report", checkpoint, "-o", direct, "-q").exit_code == 0
    result = cli("analyze", checkpoint, "-q", "-f", "json", "-o", tmp_path / "run.json",
                 "--save-spectra", tmp_path / "run.spectra.safetensors")
    assert result.exit_code == 0, result.output
    result = cli("report", tmp_path / "run.json", "-o", saved)  # finds run.spectra.safetensors beside it
    assert result.exit_code == 0, result.output
    (tmp_path / "run.spectra.safetensors").rename(tmp_path / "kept.safetensors")
    result = cli("report", tmp_path / "run.json", "--spectra", tmp_path / "kept.safetensors", "-o", explicit)
    assert result.exit_code == 0, result.output
    assert without_timing(direct.read_text()) == without_timing(saved.read_text()) == without_timing(explicit.read_text())
    assert direct.read_text() != without_timing(direct.read_text())  # the mask did hide the timing


def test_report_without_spectra_says_how_to_save_them(cli, checkpoint, tmp_path):
    assert cli("analyze", checkpoint, "-q", "-f", "json", "-o", tmp_path / "run.json").exit_code == 0
    result = cli("report", tmp_path / "run.json", "-o", tmp_path / "report.html")
    assert result.exit_code == 2
    assert result.stderr.startswith("htsr: error: ") and "htsr analyze CHECKPOINT --save-spectra FILE" in result.stderr
    assert not (tmp_path / "report.html").exists()


def test_report_refuses_spectra_of_another_analysis(cli, checkpoint, tmp_path):
    assert cli("analyze", checkpoint, "-q", "-f", "json", "-o", tmp_path / "run.json").exit_code == 0
    other = tmp_path / "other.safetensors"
    save_file({"blocks.0.q.weight": torch.randn(30, 12)}, other)
    assert cli("analyze", other, "-q", "-o", tmp_path / "o.txt", "--save-spectra", tmp_path / "o.spectra").exit_code == 0
    result = cli("report", tmp_path / "run.json", "--spectra", tmp_path / "o.spectra", "-o", tmp_path / "r.html")
    assert result.exit_code == 2
    assert "no spectrum of 24 eigenvalues for layer 'blocks.0." in result.stderr
    result = cli("report", tmp_path / "run.json", "--spectra", other, "-o", tmp_path / "r.html")
    assert result.exit_code == 2 and "not an htsr.spectra/1 file" in result.stderr


def test_report_usage_errors(cli, checkpoint, tmp_path):
    result = cli("report", checkpoint)
    assert result.exit_code == 2 and "--output" in result.stderr
    assert cli("analyze", checkpoint, "-q", "-f", "json", "-o", tmp_path / "run.json").exit_code == 0
    result = cli("report", tmp_path / "run.json", "--xmin", "median", "-o", tmp_path / "r.html")
    assert result.exit_code == 2 and "analysis options" in result.stderr
    result = cli("report", checkpoint, "--spectra", tmp_path / "x.safetensors", "-o", tmp_path / "r.html")
    assert result.exit_code == 2 and "--spectra" in result.stderr


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
