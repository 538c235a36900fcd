"""`htsr report`: the same HTML from a checkpoint or a saved report, and what it says without spectra."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import assert_user_error
from tests.render.test_html import STATE


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(STATE, path)
    return path


def without_timing(page: str) -> str:
    return re.sub(r'<span id="seconds">[^<]*</span>', "", page)


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


def test_report_without_spectra_writes_what_it_can_and_says_how_to_save_them(cli, checkpoint, tmp_path):
    assert cli("analyze", checkpoint, "-q", "-f", "json", "-o", tmp_path / "run.json").exit_code == 0
    result = cli("report", tmp_path / "run.json", "-o", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("note: no spectra beside ") and "--save-spectra FILE" in lines[0]
    assert lines[1:] == [f"wrote {tmp_path / 'report.html'}"]
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg ") == 1 and "data:image/png" not in page  # overview, no layer plots
    assert '<p class="note">3 analyzed layers have no fit-diagnostics plot' in page
    assert page.count('<tr class="layer"') == 4 and 'class="layer plotted"' not in page


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
    for source in (checkpoint, tmp_path / "run.json"):  # -o r.json would get an HTML page
        result = cli("report", source, "-o", tmp_path / "r.json")
        assert_user_error(result, f"-o {tmp_path / 'r.json'}: htsr report writes an HTML page; name it .html")
        assert not (tmp_path / "r.json").exists()
    assert cli("report", checkpoint, "-o", tmp_path / "r.HTM", "-q").exit_code == 0
