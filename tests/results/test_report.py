"""Report (htsr_cli/results/report.py): quality classes, the summary by hand, the JSON round trip, and the notebook views."""

from __future__ import annotations

import re
import sys

import pytest

import htsr_cli
from htsr_cli.errors import HtsrError
from htsr_cli.settings import QUALITY_BANDS
from htsr_cli.results.report import LayerResult, Report, StageTimes, is_report_file, quality_of, spectra_path_for, summarize
from tests.conftest import FIXTURES

TINY_CNN = FIXTURES / "tiny-cnn-trained.pth"


def layer(name: str, status: str, alpha: float | None, params: int, alpha_farms: float | None = None) -> LayerResult:
    return LayerResult(
        name=name, tensor=f"{name}.weight", kind="linear", shape=[10, 10], block=None, params=params, status=status,
        alpha=alpha, quality=quality_of(alpha), alpha_weighted=None if alpha is None else alpha * 2, alpha_farms=alpha_farms,
    )


@pytest.mark.parametrize(
    ("alpha", "quality"),
    [(None, "unknown"), (1.999, "over-trained"), (2.0, "ok"), (6.0, "ok"), (6.001, "under-trained")],
)
def test_quality_bands_include_their_ends(alpha, quality):
    assert quality_of(alpha) == quality


def test_the_quality_band_follows_the_xmin_rule():
    # 1.8 is a typical median-xmin alpha of a trained layer (MiniLM: 1.67 to 2.65): ok under median, not under ks
    assert (quality_of(1.8, "median"), quality_of(1.8, "ks")) == ("ok", "over-trained")
    assert quality_of(QUALITY_BANDS["peak"][1] + 0.01, "peak") == "under-trained"


def test_summary_by_hand():
    layers = [
        layer("a", "ok", 2.0, params=100, alpha_farms=1.5),
        layer("b", "ok", 4.0, params=300, alpha_farms=7.0),
        layer("c", "fit-failed", None, params=50),  # analysed, no alpha: quality unknown
        layer("d", "skipped", None, params=10),  # not analysed: in no quality count
    ]
    summary = summarize(layers, 1.23456, with_farms=True)
    assert (summary["layers"], summary["analyzed"], summary["skipped"], summary["failed"]) == (4, 2, 1, 1)
    assert summary["mean_alpha"] == 3.0 and summary["median_alpha"] == 3.0
    assert summary["weighted_alpha"] == (2.0 * 100 + 4.0 * 300) / 400  # 3.5
    assert summary["mean_alpha_weighted"] == 6.0  # alpha_weighted 4 and 8
    assert summary["quality_counts"] == {"ok": 2, "under-trained": 0, "over-trained": 0, "unknown": 1}
    assert summary["seconds"] == 1.235
    assert summary["mean_alpha_farms"] == 4.25 and summary["median_alpha_farms"] == 4.25
    assert summary["weighted_alpha_farms"] == (1.5 * 100 + 7.0 * 300) / 400  # 5.625
    assert summary["quality_counts_farms"] == {"ok": 0, "under-trained": 1, "over-trained": 1, "unknown": 1}
    assert "mean_alpha_farms" not in summarize(layers, 0.0, with_farms=False)


def test_summary_of_layers_without_an_alpha_has_no_means():
    summary = summarize([layer("a", "skipped", None, params=10)], 0.0, with_farms=False)
    assert (summary["mean_alpha"], summary["median_alpha"], summary["weighted_alpha"], summary["mean_alpha_weighted"]) == (
        None, None, None, None
    )


def test_stage_times_round_seconds_and_keep_counts():
    times = StageTimes(read=1.234567, solve=0.00004, matrices=3)
    times.add("solve", 2.0)
    assert times.to_json() == {
        "read": 1.2346, "transfer": 0.0, "solve": 2.0, "fit": 0.0, "farms": 0.0, "wall": 0.0, "matrices": 3, "batches": 0,
    }


def test_saved_reports_and_their_spectra_files(tmp_path):
    saved = tmp_path / "run.json"
    saved.write_text("{}")
    assert is_report_file(saved) and not is_report_file(tmp_path / "missing.json")
    assert not is_report_file(tmp_path / "model.pth")
    assert spectra_path_for(saved) == tmp_path / "run.spectra.safetensors"


def test_summary_is_consistent_with_layers(state_dict):
    report = htsr_cli.analyze(state_dict)
    fitted = [layer for layer in report.layers if layer.alpha is not None]
    s = report.summary
    assert s["mean_alpha"] == pytest.approx(sum(layer.alpha for layer in fitted) / len(fitted))
    assert s["weighted_alpha"] == pytest.approx(
        sum(layer.alpha * layer.params for layer in fitted) / sum(layer.params for layer in fitted)
    )
    assert sum(s["quality_counts"].values()) == s["analyzed"]
    for layer in fitted:
        expected = "over-trained" if layer.alpha < 2 else "under-trained" if layer.alpha > 6 else "ok"
        assert layer.quality == expected


def test_report_json_round_trips(state_dict):
    report = htsr_cli.analyze(state_dict)
    again = Report.from_json(__import__("json").loads(report.dumps()))
    assert again.layers == report.layers and again.summary == report.summary


def test_report_repr_html_and_pandas():
    report = htsr_cli.analyze(TINY_CNN)
    assert repr(report) == (
        f"Report(checkpoint={str(TINY_CNN)!r}, layers=6, analyzed=6, mean_alpha={report.summary['mean_alpha']:.3f})"
    )
    html = report._repr_html_()
    assert html.count("<tr>") == 6 + 1 + len(re.findall("<th style", html))  # layer rows, header, summary rows
    assert "conv1" in html and "param-weighted mean" in html
    frame = report.to_pandas()
    assert list(frame["name"]) == [layer.name for layer in report.layers]
    assert list(frame["layer_id"]) == list(range(6))
    assert frame.loc[0, "alpha"] == report.layers[0].alpha and frame.loc[0, "ks_distance"] == report.layers[0].ks_distance
    assert (frame.loc[3, "N"], frame.loc[3, "M"]) == (1024, 256)  # fc1 is 256 x 1024
    assert "alpha_farms" not in frame.columns


def test_to_pandas_without_pandas_says_how_to_install_it(monkeypatch):
    report = htsr_cli.analyze(TINY_CNN, layers="fc1")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(HtsrError, match=r'pip install pandas \(or, in a clone of htsr, pip install "\.\[pandas\]"\)'):
        report.to_pandas()


def test_repr_html_escapes_layer_names():
    import torch

    report = htsr_cli.analyze({"<script>x</script>.weight": torch.randn(20, 12)})
    assert "<script>" not in report._repr_html_() and "&lt;script&gt;" in report._repr_html_()
