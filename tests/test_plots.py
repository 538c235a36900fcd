"""Plots: file names, the drawn fit, the overview, `analyze --plots/--save-spectra`, and lazy matplotlib."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.image import imread
from safetensors.torch import save_file

from conftest import REPO
from htsr_cli.analysis import LayerSpectra, analyze
from htsr_cli.errors import HtsrError
from htsr_cli.plots import (
    QUALITY_COLORS,
    esd_figure,
    log_histogram,
    overview_figure,
    plot_file_names,
    power_law_density,
    write_plots,
)
from htsr_cli.report import LayerResult, Report, summarize
from htsr_cli.spectra_file import load_spectra, save_spectra


def tiny_state_dict() -> dict[str, torch.Tensor]:
    """Two blocks of linear layers, plus one layer of each status that has no alpha."""
    g = torch.Generator().manual_seed(7)
    return {
        "blocks.0.q.weight": torch.randn(40, 24, generator=g),
        "blocks.0.v.weight": torch.randn(40, 24, generator=g) ** 3,
        "blocks.1.q.weight": torch.randn(24, 40, generator=g),
        "blocks.1.ortho.weight": torch.eye(16),  # all eigenvalues 1: no valid fit
        "blocks.1.bad.weight": torch.full((16, 16), float("nan")),  # failed
        "tiny.weight": torch.randn(5, 40, generator=g),  # 5 eigenvalues < --min-evals 10: skipped
    }


ANALYSED = ["blocks.0.q", "blocks.0.v", "blocks.1.q", "blocks.1.ortho"]


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_state_dict(), path)
    return path


def layer(name: str, alpha: float | None, **fields) -> LayerResult:
    result = LayerResult(name=name, tensor=f"{name}.weight", kind="linear", shape=[8, 8],
                         block=name.rsplit(".", 1)[0], params=64, alpha=alpha, **fields)
    result.status = "ok" if alpha is not None else "fit-failed"
    return result


def test_plot_file_names_are_safe_distinct_and_never_the_overview():
    names = ["a/b c", "a_b_c", "overview", "Overview", "..", "encoder.layer.0.attention.self.query"]
    assert plot_file_names(names) == {
        "a/b c": "a_b_c.png",
        "a_b_c": "a_b_c-2.png",
        "overview": "overview-2.png",
        "Overview": "Overview-3.png",  # distinct from overview-2.png on a case-insensitive disk
        "..": "layer.png",
        "encoder.layer.0.attention.self.query": "encoder.layer.0.attention.self.query.png",
    }


def test_power_law_density_is_the_pareto_tail_scaled_to_its_share():
    x = np.array([2.0, 4.0])
    # (alpha - 1) / xmin * (x / xmin)^-alpha * n / N with alpha 3, xmin 2, n / N = 0.5
    np.testing.assert_allclose(power_law_density(x, 3.0, 2.0, 0.5), [0.5, 0.0625])


def test_log_histogram_spreads_the_positive_values_over_the_whole_spectrum():
    density, edges = log_histogram(np.array([0.0, 1.0, 10.0, 100.0]))
    assert len(edges) == 11 and edges[0] == 1.0 and edges[-1] == pytest.approx(100.0)
    np.testing.assert_allclose(edges[1:] / edges[:-1], 10 ** 0.2)  # log-spaced
    # three of the four eigenvalues are positive: the bars hold 3/4 of the mass
    assert float(np.sum(density * np.diff(edges))) == pytest.approx(0.75)


def test_esd_figure_draws_the_fit_from_xmin_and_the_farms_overlay():
    esd = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0], dtype=torch.float64)
    pool = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    result = layer("blocks.0.q", 3.0, xmin=2.0, ks_distance=0.1, tail_size=6, num_evals=8,
                   alpha_farms=2.5, xmin_farms=2.0)
    axes = esd_figure(result, LayerSpectra(esd, pool)).axes[0]
    fit, xmin_line, farms_fit, farms_xmin = axes.lines
    assert fit.get_xdata()[0] == 2.0 and fit.get_xdata()[-1] == 32.0
    # at xmin: (alpha - 1) / xmin * tail share = 2 / 2 * 6 / 8
    assert fit.get_ydata()[0] == pytest.approx(0.75)
    assert list(xmin_line.get_xdata()) == [2.0, 2.0]
    # FARMS: 3 of the 4 pooled eigenvalues are >= xmin_farms; (2.5 - 1) / 2 * 3 / 4
    assert farms_fit.get_ydata()[0] == pytest.approx(0.5625)
    assert axes.get_xscale() == axes.get_yscale() == "log"
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == [
        "ESD (8 eigenvalues)", "ESD fit: alpha 3.000", "ESD xmin 2",
        "FARMS (4 eigenvalues)", "FARMS fit: alpha 2.500", "FARMS xmin 2",
    ]
    assert axes.get_title() == "blocks.0.q\nalpha 3.000   D 0.100   tail 6/8   alpha_farms 2.500"


def test_esd_figure_skips_a_farms_pool_identical_to_the_esd():
    esd = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    result = layer("head", 3.0, xmin=2.0, ks_distance=0.1, tail_size=3, num_evals=5, alpha_farms=3.0, xmin_farms=2.0)
    axes = esd_figure(result, LayerSpectra(esd, esd.clone())).axes[0]
    assert len(axes.lines) == 2  # the ESD's fit and xmin only


def test_spectra_file_round_trips_esd_and_farms_pools(tmp_path):
    spectra = {
        "model.layers.0/odd name": LayerSpectra(torch.tensor([0.0, 1.5, 3.0], dtype=torch.float64),
                                                torch.tensor([0.25, 2.0], dtype=torch.float64)),
        "head": LayerSpectra(torch.tensor([1.0, 2.0], dtype=torch.float64)),
    }
    save_spectra(tmp_path / "s.safetensors", spectra)
    loaded = load_spectra(tmp_path / "s.safetensors")
    assert sorted(loaded) == sorted(spectra)
    assert loaded["model.layers.0/odd name"].esd.tolist() == [0.0, 1.5, 3.0]
    assert loaded["model.layers.0/odd name"].farms.tolist() == [0.25, 2.0]
    assert loaded["head"].esd.tolist() == [1.0, 2.0] and loaded["head"].farms is None
    with pytest.raises(HtsrError, match="no such spectra file"):
        load_spectra(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(HtsrError, match="cannot read spectra file"):
        load_spectra(tmp_path / "junk.safetensors")


def test_overview_colours_alphas_by_quality_and_shades_alternate_blocks():
    layers = [
        layer("blocks.0.a", 1.5), layer("blocks.0.b", 3.0),
        layer("blocks.1.a", 7.0), layer("blocks.2.a", None, reason="no valid fit"),
    ]
    report = Report("synthetic", {"farms": None}, layers, summarize(layers, 0.0, with_farms=False))
    axes = overview_figure(report).axes[0]
    alphas, failed = axes.collections
    assert alphas.get_offsets()[:, 1].tolist() == [1.5, 3.0, 7.0]
    expected = [to_rgba(QUALITY_COLORS[q]) for q in ("over-trained", "ok", "under-trained")]
    np.testing.assert_allclose(alphas.get_facecolors(), expected)
    assert failed.get_offsets()[:, 0].tolist() == [3.0]  # the failed fit keeps its place
    shaded = [patch.get_x() for patch in axes.patches if patch.get_height() == 1.0]  # full-height spans
    assert shaded == [-0.5, 2.5]  # blocks.0 and blocks.2; blocks.1 between them stays white
    assert {line.get_ydata()[0] for line in axes.lines} == {2.0, 6.0}
    assert [t.get_text() for t in axes.get_xticklabels()] == [l.name for l in layers]


def test_write_plots_one_png_per_analysed_layer_plus_overview(tmp_path):
    report = analyze(tiny_state_dict(), keep_spectra=True)
    assert [l.name for l in report.layers if l.analysed] == ANALYSED
    written = write_plots(report, tmp_path / "plots")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        [f"{name}.png" for name in ANALYSED] + ["overview.png"]
    )
    assert written[-1].name == "overview.png"
    for path in written[:-1]:
        assert imread(path).shape == (440, 640, 4)  # 6.4 x 4.4 inches at 100 dpi, RGBA
    assert imread(written[-1]).shape[2] == 4


def test_same_report_gives_the_same_png_bytes(tmp_path):
    report = analyze(tiny_state_dict(), keep_spectra=True, layers=r"blocks\.0")
    first = [p.read_bytes() for p in write_plots(report, tmp_path / "a")]
    second = [p.read_bytes() for p in write_plots(report, tmp_path / "b")]
    assert first == second


def test_analyze_writes_plots_and_spectra(cli, checkpoint, tmp_path):
    plots, spectra = tmp_path / "plots", tmp_path / "run.spectra.safetensors"
    result = cli("analyze", checkpoint, "-q", "--plots", plots, "--save-spectra", spectra, "-f", "json")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in plots.iterdir()) == sorted([f"{n}.png" for n in ANALYSED] + ["overview.png"])
    saved = load_spectra(spectra)
    fresh = analyze(checkpoint, keep_spectra=True).spectra
    assert sorted(saved) == sorted(fresh) == sorted(ANALYSED)
    for name in ANALYSED:
        assert saved[name].esd.dtype == torch.float64
        assert torch.equal(saved[name].esd, fresh[name].esd)
        assert saved[name].farms is None


def test_analyze_plots_into_a_file_is_a_usage_error(cli, checkpoint, tmp_path):
    in_the_way = tmp_path / "plots"
    in_the_way.write_text("not a directory")
    result = cli("analyze", checkpoint, "-q", "--plots", in_the_way)
    assert result.exit_code == 2
    assert result.stderr.startswith("htsr: error: ") and "'--plots'" in result.stderr and "is a file" in result.stderr
    with pytest.raises(HtsrError, match="exists and is not a directory"):
        write_plots(analyze(tiny_state_dict(), keep_spectra=True, layers="tiny"), in_the_way)


def test_analyze_loads_matplotlib_only_when_drawing(checkpoint, tmp_path):
    script = f"""
import sys
from htsr_cli.cli.app import app
app(["analyze", {str(checkpoint)!r}, "-q", "-f", "json"], standalone_mode=False)
assert "matplotlib" not in sys.modules, "analyze without --plots imported matplotlib"
app(["analyze", {str(checkpoint)!r}, "-q", "-f", "json", "--plots", {str(tmp_path / "plots")!r}], standalone_mode=False)
assert "matplotlib" in sys.modules
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "plots" / "overview.png").is_file()
