"""Plots: file names, the drawn fit, the overview, `analyze --plots/--save-spectra`, and lazy matplotlib."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.image import imread
from safetensors.torch import save_file

from tests.conftest import REPO
from htsr_cli.engine.pipeline import analyze
from htsr_cli.results.report import LayerSpectra
from htsr_cli.errors import HtsrError
from htsr_cli.spectra.fit import fit_power_law
from htsr_cli.render.plots import (
    OVERVIEW_MAX_WIDTH,
    QUALITY_COLORS,
    block_grid,
    checkpoint_name,
    drawable,
    esd_figure,
    figure_bytes,
    fit_diagnostics_figure,
    log_histogram,
    overview_figure,
    overview_layers,
    plot_file_names,
    power_law_density,
    write_plots,
    xmin_scan,
)
from htsr_cli.results.report import LayerResult, Report, summarize
from htsr_cli.results.spectra_file import load_spectra


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
    assert axes.get_xlim()[0] == pytest.approx(0.5 / 1.2)  # from the smallest eigenvalue


def test_farms_axes_start_at_the_smallest_eigenvalue_that_matters():
    esd = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0], dtype=torch.float64)
    # a FARMS pool of a rank-deficient window: round-off eigenvalues far below lambda_max
    pool = torch.tensor([1e-14, 3e-9, 0.25, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    result = layer("blocks.0.q", 3.0, xmin=2.0, ks_distance=0.1, tail_size=6, num_evals=8,
                   alpha_farms=2.5, xmin_farms=2.0)
    axes = esd_figure(result, LayerSpectra(esd, pool), "run/model.pth").axes[0]
    assert axes.get_xlim()[0] == pytest.approx(0.25 / 1.2)  # not 1e-14
    assert axes.get_title().startswith("model.pth: blocks.0.q\n")


def test_esd_figure_skips_a_farms_pool_identical_to_the_esd():
    esd = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    result = layer("head", 3.0, xmin=2.0, ks_distance=0.1, tail_size=3, num_evals=5, alpha_farms=3.0, xmin_farms=2.0)
    axes = esd_figure(result, LayerSpectra(esd, esd.clone())).axes[0]
    assert len(axes.lines) == 2  # the ESD's fit and xmin only


def test_overview_shows_quality_by_colour_and_shape_and_shades_alternate_blocks():
    layers = [
        layer("blocks.0.a", 1.5), layer("blocks.0.b", 3.0),
        layer("blocks.1.a", 7.0), layer("blocks.2.a", None, reason="no valid fit"),
    ]
    report = Report("/very/long/path/to/runs/model.safetensors", {"farms": None}, layers,
                    summarize(layers, 0.0, with_farms=False))
    axes = overview_figure(report).axes[0]
    by_gid = {collection.get_gid(): collection for collection in axes.collections}
    assert sorted(by_gid) == ["alpha-ok", "alpha-over-trained", "alpha-under-trained", "alpha-unknown"]
    for gid, x, y in [("alpha-over-trained", 0, 1.5), ("alpha-ok", 1, 3.0), ("alpha-under-trained", 2, 7.0)]:
        assert by_gid[gid].get_offsets().tolist() == [[x, y]]
        quality = gid.removeprefix("alpha-")
        np.testing.assert_allclose(by_gid[gid].get_facecolors(), [to_rgba(QUALITY_COLORS[quality])])
    # shapes differ too: the three classes read in grey-scale print
    paths = {gid: by_gid[gid].get_paths()[0].vertices.round(3).tolist() for gid in by_gid}
    assert len({str(path) for path in paths.values()}) == 4
    assert by_gid["alpha-unknown"].get_offsets()[:, 0].tolist() == [3.0]  # the failed fit keeps its place
    shaded = [patch.get_x() for patch in axes.patches if patch.get_height() == 1.0]  # full-height spans
    assert shaded == [-0.5, 2.5]  # blocks.0 and blocks.2; blocks.1 between them stays white
    assert {line.get_ydata()[0] for line in axes.lines} == {2.0, 6.0}
    assert [t.get_text() for t in axes.get_xticklabels()] == [l.name for l in layers]
    assert axes.get_title() == "model.safetensors\npower-law alpha per layer (4 analyzed)"
    legend = axes.get_legend()
    assert legend.get_bbox_to_anchor().x0 >= axes.bbox.x1 - 1  # outside the data, right of the axes


@pytest.mark.parametrize(("checkpoint", "name"), [
    ("/data/runs/llama/model.safetensors", "model.safetensors"),
    ("./fixtures/tiny-llama/", "tiny-llama"),
    ("runs/model.pth", "model.pth"),
    ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    ("in-memory nn.Module", "in-memory nn.Module"),
])
def test_titles_name_the_checkpoint_by_basename_or_hub_id(checkpoint, name):
    assert checkpoint_name(checkpoint) == name


def test_write_plots_writes_the_overview_esds_and_fit_diagnostics(tmp_path):
    report = analyze(tiny_state_dict(), keep_spectra=True)
    assert [l.name for l in report.layers if l.analysed] == ANALYSED
    calls = []
    written = write_plots(report, tmp_path / "plots", progress=lambda *args: calls.append(args))
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        [f"{name}.png" for name in ANALYSED] + ["overview.png", "fit"]
    )
    assert sorted(p.name for p in (tmp_path / "plots" / "fit").iterdir()) == sorted(f"{n}.png" for n in ANALYSED)
    assert written[0].name == "overview.png"  # first: a run stopped half way still leaves it
    for path in written[1::2]:
        assert imread(path).shape == (660, 1290, 4)  # 8.6 x 4.4 inches at the default 150 dpi, RGBA
    for path in written[2::2]:
        assert path.parent.name == "fit" and imread(path).shape == (660, 2250, 4)
    assert calls == [(i, 4, name) for i, name in enumerate(ANALYSED)] + [(4, 4, "")]


@pytest.mark.parametrize(("fmt", "magic"), [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_plot_formats_and_dpi(tmp_path, fmt, magic):
    report = analyze(tiny_state_dict(), keep_spectra=True, layers=r"blocks\.0\.q")
    written = write_plots(report, tmp_path / fmt, fmt)
    assert [p.name for p in written] == [f"overview.{fmt}", f"blocks.0.q.{fmt}", f"blocks.0.q.{fmt}"]
    assert all(p.read_bytes().startswith(magic) for p in written)
    again = write_plots(report, tmp_path / "again", fmt)
    assert [p.read_bytes() for p in written] == [p.read_bytes() for p in again]  # no dates, no random ids
    small = write_plots(report, tmp_path / "small", "png", dpi=50)
    assert imread(small[1]).shape == (220, 430, 4)
    with pytest.raises(HtsrError, match="plot format must be one of png, svg, pdf"):
        write_plots(report, tmp_path / "x", "jpg")


def test_drawable_separates_what_a_log_axis_cannot_show():
    spectrum = drawable(np.array([np.nan, -1e-9, 0.0, 1e-12, 1.0, 100.0, np.inf]))
    assert spectrum.values.tolist() == [1.0, 100.0]
    assert (spectrum.total, spectrum.not_finite, spectrum.negative, spectrum.zeros) == (7, 2, 1, 2)
    assert spectrum.left_out() == "not drawn: 2 not finite, 1 negative, 2 zero or < 1e-06 x lambda_max of 7"
    assert drawable(np.array([1.0, 2.0])).left_out() is None


@pytest.mark.parametrize("values", [
    [0.0] * 16,                                   # an all-zero LoRA B matrix
    [float("nan")] * 3 + [1.0, 2.0, 4.0],         # NaN from a damaged spectra file
    [-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0],   # negatives
    [3.0] * 12,                                   # one repeated eigenvalue
    [],
])
def test_degenerate_spectra_draw_what_they_can(values):
    esd = torch.tensor(values, dtype=torch.float64)
    result = layer("lora.B", None, reason="no valid power-law fit", num_evals=len(values))
    for figure in (esd_figure(result, LayerSpectra(esd)), fit_diagnostics_figure(result, LayerSpectra(esd))):
        for fmt in ("png", "svg"):
            assert figure_bytes(figure, fmt)
    texts = [t.get_text() for t in esd_figure(result, LayerSpectra(esd)).axes[0].texts]
    legend = esd_figure(result, LayerSpectra(esd)).axes[0].get_legend()
    notes = texts + ([t.get_text() for t in legend.get_texts()] if legend else [])
    expected = drawable(esd.numpy()).left_out()
    if expected:
        assert any(expected in " ".join(note.split()) for note in notes), notes  # the legend wraps it


def test_an_all_zero_layer_never_breaks_plots_or_the_report(cli, tmp_path):
    state = {**tiny_state_dict(), "blocks.2.lora_B.weight": torch.zeros(64, 16)}
    path = tmp_path / "lora.safetensors"
    save_file(state, path)
    result = cli("analyze", path, "-q", "--plots", tmp_path / "plots", "-f", "json", "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plots" / "overview.png").is_file()
    assert (tmp_path / "plots" / "blocks.2.lora_B.png").is_file()
    assert (tmp_path / "plots" / "fit" / "blocks.2.lora_B.png").is_file()
    result = cli("report", path, "-q", "-o", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert "blocks.2.lora_B" in (tmp_path / "r.html").read_text()


def test_xmin_scan_matches_the_fit_at_the_chosen_xmin():
    g = torch.Generator().manual_seed(3)
    esd, _ = torch.sort(torch.rand(300, generator=g, dtype=torch.float64) ** -0.8)
    fit = fit_power_law(esd, "ks")
    scan = xmin_scan(esd, "ks")
    assert len(scan.xmins) == 299  # every candidate below DIAGNOSTIC_CANDIDATES
    chosen = int(np.flatnonzero(scan.xmins == fit.xmin)[0])
    assert scan.alphas[chosen] == pytest.approx(fit.alpha)
    assert scan.distances[chosen] == pytest.approx(fit.ks_distance)
    assert scan.distances[scan.distances < 1].min() == pytest.approx(fit.ks_distance)  # ks picks the smallest D


def test_fit_diagnostics_marks_the_chosen_xmin_beside_log_and_linear_esds():
    report = analyze(tiny_state_dict(), keep_spectra=True, layers=r"blocks\.0\.v")
    figure = report.plot_fit_diagnostics("blocks.0.v")
    scan_axes, log_axes, linear_axes, alpha_axes = figure.axes
    layer_ = report.layers[0]
    assert scan_axes.get_xscale() == "log" and log_axes.get_xscale() == log_axes.get_yscale() == "log"
    assert linear_axes.get_xscale() == linear_axes.get_yscale() == "linear"
    marked = [line for line in scan_axes.lines if list(line.get_xdata()) == [layer_.xmin]]
    assert [line.get_ydata()[0] for line in marked] == [layer_.ks_distance]
    assert [list(line.get_ydata()) for line in alpha_axes.lines if len(line.get_xdata()) == 1] == [[layer_.alpha]]
    assert figure._suptitle.get_text().startswith("<in-memory state dict>: blocks.0.v\nalpha ")


def test_report_plot_helpers_return_figures_and_name_missing_spectra():
    report = analyze(tiny_state_dict(), keep_spectra=True, layers=r"blocks\.0")
    assert isinstance(report.plot_overview(), Figure)
    assert isinstance(report.plot_esd("blocks.0.q"), Figure)
    assert isinstance(report.plot_esd(report.layers[1]), Figure)
    with pytest.raises(HtsrError, match="no layer named 'nope'"):
        report.plot_esd("nope")
    bare = analyze(tiny_state_dict(), layers=r"blocks\.0")
    with pytest.raises(HtsrError, match="no spectrum kept for layer 'blocks.0.q': analyze with keep_spectra=True"):
        bare.plot_fit_diagnostics("blocks.0.q")


def test_hostile_names_give_one_note_not_a_warning_per_glyph(cli, tmp_path):
    names = ["blocks.0.\U0001F600\U0001F601\U0001F602", "blocks.0.\u0915\u0916\u0917\u0918", "blocks.0.\x1b[31m\x07"]
    g = torch.Generator().manual_seed(1)
    path = tmp_path / "hostile.safetensors"
    save_file({f"{name}.weight": torch.randn(30, 20, generator=g) for name in names}, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli("analyze", path, "--plots", tmp_path / "plots", "-f", "json", "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if "Glyph" in str(w.message)]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "not in the plot font" in notes[0] and "\x1b" not in notes[0]


def test_same_report_gives_the_same_png_bytes(tmp_path):
    report = analyze(tiny_state_dict(), keep_spectra=True, layers=r"blocks\.0")
    first = [p.read_bytes() for p in write_plots(report, tmp_path / "a")]
    second = [p.read_bytes() for p in write_plots(report, tmp_path / "b")]
    assert first == second


def test_analyze_writes_plots_and_spectra(cli, checkpoint, tmp_path):
    plots, spectra = tmp_path / "plots", tmp_path / "run.spectra.safetensors"
    result = cli("analyze", checkpoint, "--plots", plots, "--save-spectra", spectra, "-f", "json", "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in plots.iterdir()) == sorted([f"{n}.png" for n in ANALYSED] + ["overview.png", "fit"])
    assert result.stderr.splitlines() == [
        f"wrote {tmp_path / 'r.json'}", f"wrote {spectra}",
        f"wrote {plots} (9 png files: overview, ESDs, fit/ diagnostics)",
    ]
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


# ---- every text inside the picture -------------------------------------------------------


def drawn_texts(figure: Figure) -> list:
    """Every text the figure draws: titles, axis labels, tick labels of ticks in view, legend entries, notes."""
    texts = list(figure.texts)
    if figure._suptitle is not None:
        texts.append(figure._suptitle)
    every_axes = [*figure.axes, *(child for axes in figure.axes for child in axes.child_axes)]
    for axes in every_axes:
        texts += [axes.title, axes._left_title, axes._right_title, *axes.texts]
        for axis in (axes.xaxis, axes.yaxis):
            texts.append(axis.label)
            low, high = sorted(axis.get_view_interval())
            for tick in (*axis.get_major_ticks(), *axis.get_minor_ticks()):
                if low <= tick.get_loc() <= high:  # matplotlib keeps, but never draws, labels of ticks out of view
                    texts += [label for label in (tick.label1, tick.label2) if label.get_visible()]
        if axes.get_legend() is not None:
            texts += [*axes.get_legend().get_texts(), axes.get_legend().get_title()]
    return [text for text in texts if text.get_visible() and text.get_text().strip()]


def clipped_texts(figure: Figure) -> list[str]:
    """The drawn texts whose extent reaches outside the figure (1 pixel of slack)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    bounds = figure.bbox
    clipped = []
    for text in drawn_texts(figure):
        extent = text.get_window_extent(renderer)
        inside = (extent.x0 >= bounds.x0 - 1 and extent.x1 <= bounds.x1 + 1
                  and extent.y0 >= bounds.y0 - 1 and extent.y1 <= bounds.y1 + 1)
        if not inside:
            clipped.append(text.get_text())
    return clipped


def test_the_clipping_check_sees_a_legend_past_the_edge():
    figure = Figure(figsize=(4, 3))
    axes = figure.add_subplot()
    axes.plot([1, 2], [1, 2], label="a label far too long to fit right of a small figure")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    assert clipped_texts(figure) == ["a label far too long to fit right of a small figure"]


def deficient_layer(name: str) -> tuple[LayerResult, LayerSpectra]:
    """A rank-deficient layer with a long name: its legend carries the "not drawn" line."""
    values = torch.cat([torch.zeros(40), torch.linspace(1e-3, 1.0, 200) ** 3 * 50]).double()
    esd = torch.sort(values).values
    fit = fit_power_law(esd, "ks")
    result = LayerResult(name=name, tensor=f"{name}.weight", kind="linear", shape=[240, 240], block=None, params=57600,
                         num_evals=240, alpha=fit.alpha, xmin=fit.xmin, ks_distance=fit.ks_distance, tail_size=fit.tail_size)
    return result, LayerSpectra(esd)


def many_layers(blocks: int, kinds: list[str], xmin: str = "ks") -> Report:
    g = np.random.default_rng(0)
    layers = [layer("model.embed_tokens", 3.0)]
    layers[0].block = None
    for block in range(blocks):
        for kind in kinds:
            alpha = None if (block, kind) == (3, kinds[0]) else float(g.uniform(1.2, 25.0))
            layers.append(layer(f"model.layers.{block}.{kind}", alpha))
            layers[-1].block = f"model.layers.{block}"
    layers.append(layer("lm_head", 4.0))
    layers[-1].block = None
    return Report("/runs/a-rather-long-checkpoint-name-for-the-title.safetensors", {"xmin": xmin, "farms": None},
                  layers, summarize(layers, 0.0, with_farms=False, xmin=xmin))


LLAMA_KINDS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_no_text_runs_off_any_figure():
    long_name = "model.layers.17.block_sparse_moe.experts.63.w2_with_a_long_suffix"
    result, spectra = deficient_layer(long_name)
    assert drawable(spectra.esd.numpy()).left_out()  # the legend has its "not drawn" line
    figures = {
        "esd": esd_figure(result, spectra, "/runs/model.safetensors"),
        "fit diagnostics": fit_diagnostics_figure(result, spectra, "ks", "/runs/model.safetensors"),
        "overview, points": overview_figure(many_layers(4, LLAMA_KINDS[:3])),
        "overview, block grid (30 blocks)": overview_figure(many_layers(30, LLAMA_KINDS)),
        "overview, block grid (80 blocks)": overview_figure(many_layers(80, LLAMA_KINDS)),
    }
    for kind, figure in figures.items():
        assert clipped_texts(figure) == [], kind


def test_a_spectrum_within_one_decade_still_gets_labelled_ticks():
    # the trained tiny CNN's conv1: 27 eigenvalues between 0.24 and 0.78, no power of ten in view
    esd = torch.linspace(0.24, 0.78, 27).double()
    fit = fit_power_law(esd, "ks")
    result = LayerResult(name="conv1", tensor="conv1.weight", kind="conv2d", shape=[32, 3, 3, 3], block=None, params=864,
                         num_evals=27, alpha=fit.alpha, xmin=fit.xmin, ks_distance=fit.ks_distance, tail_size=fit.tail_size)
    figures = [esd_figure(result, LayerSpectra(esd)).axes[0], *fit_diagnostics_figure(result, LayerSpectra(esd)).axes[:2]]
    for axes in figures:
        low, high = axes.get_xlim()
        labelled = [tick for tick in axes.get_xticklabels() if tick.get_text() and low <= tick.get_position()[0] <= high]
        assert len(labelled) >= 2, [tick.get_text() for tick in axes.get_xticklabels()]
        values = [float(tick.get_text()) for tick in labelled]
        assert all(low <= value <= high for value in values) and values == sorted(values)


def test_many_layers_make_a_block_grid_of_fixed_size():
    report = many_layers(30, LLAMA_KINDS)
    figure = overview_figure(report)
    width, height = figure.get_size_inches()
    assert width <= OVERVIEW_MAX_WIDTH and height <= 9.0
    assert overview_figure(many_layers(80, LLAMA_KINDS)).get_size_inches()[0] <= OVERVIEW_MAX_WIDTH
    grid = block_grid(overview_layers(report))
    # blocks by their index, the two layers outside blocks in columns of their own, one row per kind
    assert grid.columns == ["model.embed_tokens", *map(str, range(30)), "lm_head"]
    assert grid.rows == [*LLAMA_KINDS, "outside blocks"]
    assert grid.block_axis == "block (model.layers.N)"
    assert grid.cells[:3] == [(0, 7), (1, 0), (1, 1)] and grid.cells[-1] == (31, 7)
    axes = figure.axes[0]
    # every layer is one square of the gid'd collections the HTML report hangs its hover text on
    drawn = sum(len(collection.get_offsets()) for collection in axes.collections)
    assert drawn == len(overview_layers(report))
    assert "alpha-unknown" in {collection.get_gid() for collection in axes.collections}  # the failed fit


def test_the_overview_band_follows_the_xmin_rule():
    from htsr_cli.settings import QUALITY_BANDS

    layers = [layer("blocks.0.a", 1.8), layer("blocks.0.b", 2.2)]
    report = Report("m.pth", {"xmin": "median", "farms": None}, layers, summarize(layers, 0.0, False, "median"))
    axes = overview_figure(report).axes[0]
    assert {line.get_ydata()[0] for line in axes.lines} == set(QUALITY_BANDS["median"])
    assert {collection.get_gid() for collection in axes.collections} == {"alpha-ok"}  # 1.8 is ok under median
