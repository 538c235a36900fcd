"""FARMS (algorithms.md section 5): the published geometry, the pooled spectra, and why it exists."""

from __future__ import annotations

import dataclasses
import json
import statistics

import pytest
import torch
from safetensors.torch import save_file

from htsr_cli.spectra import fit
from htsr_cli.engine.pipeline import analyze
from htsr_cli.errors import HtsrError
from htsr_cli.spectra.farms import _gram_plan, conv_divisions, farms_fit, window_grid, window_spectra
from htsr_cli.spectra.fit import fit_power_law
from htsr_cli.settings import FarmsSettings
from htsr_cli.spectra.solver import Eigensolver

CPU = Eigensolver.create("cpu")
FARMS_FIELDS = ("alpha_farms", "xmin_farms", "ks_distance_farms", "farms_windows", "farms_num_evals")


def windows_by_svd(matrix: torch.Tensor, height: int, width: int, row_starts, col_starts) -> torch.Tensor:
    """The published loop: every window's singular values squared, pooled and sorted."""
    pooled = [
        torch.linalg.svdvals(matrix[top : top + height, left : left + width].double()) ** 2
        for top in row_starts
        for left in col_starts
    ]
    return torch.sort(torch.cat(pooled)).values


def assert_same_spectrum(got: torch.Tensor, expected: torch.Tensor) -> None:
    # Gram eigenvalues carry an absolute error of ~eps * lambda_max, so near-zero ones get an atol.
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12 * float(expected.max()))


def student_t3(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """i.i.d. Student-t entries with 3 degrees of freedom: z / sqrt(chi2_3 / 3)."""
    z = torch.randn(shape, generator=generator, dtype=torch.float64)
    chi2 = (torch.randn((3, *shape), generator=generator, dtype=torch.float64) ** 2).sum(0)
    return z / torch.sqrt(chi2 / 3)


# --- geometry ---------------------------------------------------------------------------------


def test_published_geometry_square_4096():
    grid = window_grid(4096, 4096, FarmsSettings(window=2000, q=1.0, steps=10))
    assert (grid.height, grid.width) == (2000, 2000)
    assert grid.row_step == grid.col_step == 232  # (4096 - 2000) // 9
    assert grid.row_starts == grid.col_starts == tuple(range(0, 2089, 232))
    assert grid.count == 100
    assert grid.num_evals == 200_000


def test_published_geometry_11008_by_4096():
    grid = window_grid(11008, 4096, FarmsSettings())
    assert (grid.row_step, grid.col_step) == (1000, 232)
    assert grid.row_starts == tuple(range(0, 9001, 1000))
    assert grid.count == 100 and grid.num_evals == 200_000


def test_window_clamps_to_the_short_side():
    grid = window_grid(300, 5000, FarmsSettings())
    assert (grid.height, grid.width) == (300, 300)
    assert grid.row_starts == (0,)
    assert grid.col_step == 522  # (5000 - 300) // 9
    assert grid.col_starts == tuple(range(0, 4699, 522))  # the last start, 4698, fits: 4698 + 300 <= 5000
    assert grid.count == 10 and grid.num_evals == 3000


def test_window_equal_to_the_matrix_is_one_window():
    for window in (500, 2000):
        grid = window_grid(500, 500, FarmsSettings(window=window))
        assert grid.row_starts == grid.col_starts == (0,)
        assert grid.count == 1 and grid.num_evals == 500


def test_aspect_ratio_sets_the_window_width():
    grid = window_grid(4096, 4096, FarmsSettings(q=0.5))
    assert (grid.height, grid.width) == (2000, 1000)
    assert grid.col_step == 344  # (4096 - 1000) // 9
    assert grid.num_evals == 100 * 1000
    wide = window_grid(100, 150, FarmsSettings(window=100, q=2.0))
    assert (wide.height, wide.width) == (100, 150)  # int(100 * 2) = 200 is clamped to the 150 columns


def test_conv_divisions():
    assert conv_divisions(64, 32, 1.0) == conv_divisions(32, 64, 1.0)
    blocks = conv_divisions(64, 32, 1.0)
    assert (blocks.height, blocks.width, blocks.count) == (32, 32, 2)
    blocks = conv_divisions(100, 32, 0.5)
    assert (blocks.height, blocks.width, blocks.count) == (32, 16, 3)  # 4 leftover rows ignored
    blocks = conv_divisions(64, 32, 2.0)
    assert (blocks.height, blocks.width, blocks.count) == (16, 32, 2)
    assert conv_divisions(3, 3, 0.1).width == 1


def test_one_window_per_dimension_is_rejected():
    with pytest.raises(HtsrError, match="steps=1: must be at least 2"):
        FarmsSettings(steps=1)


def test_cli_rejects_one_window_per_dimension(cli, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"fc.weight": torch.randn(20, 30)}, path)
    result = cli("analyze", path, "--farms", "--farms-steps", "1")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("htsr: error: ") and "--farms-steps" in result.stderr
    assert "Traceback" not in result.output


# --- spectra --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "cols", "settings"),
    [
        (60, 90, FarmsSettings(window=25, q=1.0, steps=4)),
        (60, 90, FarmsSettings(window=25, q=0.5, steps=4)),
        (90, 60, FarmsSettings(window=30, q=1.5, steps=3)),
        (60, 90, FarmsSettings(window=40, q=1.0, steps=10)),  # small steps: windows share Grams
    ],
)
def test_pooled_eigenvalues_equal_the_per_window_svd_loop(rows, cols, settings):
    matrix = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows + cols), dtype=torch.float64)
    grid = window_grid(rows, cols, settings)
    expected = windows_by_svd(matrix, grid.height, grid.width, grid.row_starts, grid.col_starts)
    assert expected.numel() == grid.num_evals
    for budget in (1, 1 << 28):  # one window per Gram, and as many as the budget allows
        got = window_spectra(matrix, grid, CPU, budget)
        assert got.shape == (grid.count, min(grid.height, grid.width))
        assert_same_spectrum(torch.sort(got.flatten()).values, expected)
    result = farms_fit(matrix[None], "linear", settings, CPU, "ks")
    assert_same_spectrum(result.pooled, expected)
    assert (result.windows, result.num_evals) == (grid.count, grid.num_evals)
    reference = fit_power_law(expected, "ks")
    assert result.alpha == pytest.approx(reference.alpha, rel=1e-9)
    assert result.xmin == pytest.approx(reference.xmin, rel=1e-9)
    assert result.ks_distance == pytest.approx(reference.ks_distance, rel=1e-9)
    assert result.candidates == {"exact"}


@pytest.mark.parametrize("precision", ["float64", "mixed", "float32"])
def test_window_eigensolves_on_spare_cores_give_the_same_bits(precision):
    """Solving window stacks on a pool of eigensolvers (and in smaller stacks) changes no bit."""
    matrix = torch.randn(90, 120, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    grid = window_grid(90, 120, FarmsSettings(window=30, q=1.0, steps=6))
    alone = dataclasses.replace(Eigensolver.create("cpu", precision), eigensolver_threads=1, parallel_solves=1)
    for budget in (1, 1 << 28):
        expected = window_spectra(matrix, grid, alone, budget)
        for workers in (2, 3):
            got = window_spectra(matrix, grid, dataclasses.replace(alone, parallel_solves=workers), budget)
            assert torch.equal(got, expected)


def test_neighbouring_windows_share_one_gram_when_that_saves_flops():
    grid = window_grid(60, 90, FarmsSettings(window=40, steps=10))  # column step 5
    assert _gram_plan(grid, 1 << 30)[1] > 1
    assert _gram_plan(grid, 1)[1:] == (1, 1)  # no memory: one window at a time
    # Grams over rows only when the window is taller than wide ...
    assert _gram_plan(window_grid(90, 60, FarmsSettings(window=30, q=1.5)), 1 << 30)[0] is True
    # ... and over columns when it is wider than tall.
    assert _gram_plan(window_grid(90, 60, FarmsSettings(window=30, q=0.5)), 1 << 30)[0] is False


def test_window_covering_the_square_matrix_gives_the_plain_alpha():
    matrix = torch.randn(80, 80, generator=torch.Generator().manual_seed(1), dtype=torch.float64) ** 3
    result = farms_fit(matrix[None], "linear", FarmsSettings(window=2000), CPU, "ks")
    plain = fit_power_law(CPU.pooled_eigenvalues(matrix[None]), "ks")
    assert (result.windows, result.num_evals) == (1, 80)
    assert result.alpha == pytest.approx(plain.alpha, rel=1e-12)


def test_square_conv_with_q_1_equals_the_plain_alpha_exactly():
    weight = torch.randn(32, 32, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    slices = weight.reshape(32, 32, 9).permute(2, 0, 1)
    result = farms_fit(slices, "conv2d", FarmsSettings(), CPU, "ks")
    plain_esd = CPU.pooled_eigenvalues(slices)
    plain = fit_power_law(plain_esd, "ks")
    assert result.alpha == plain.alpha
    assert result.xmin == plain.xmin and result.ks_distance == plain.ks_distance
    assert torch.equal(result.pooled, plain_esd)
    assert (result.windows, result.num_evals) == (9, 9 * 32)


def test_tall_conv_averages_the_fits_of_its_divisions():
    weight = torch.randn(64, 32, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    slices = weight.reshape(64, 32, 9).permute(2, 0, 1)
    result = farms_fit(slices, "conv2d", FarmsSettings(), CPU, "median")
    # By hand: division d is rows [32 d, 32 d + 32) of every 3x3 slice, pooled over the 9 slices.
    fits = []
    for d in range(2):
        esd = torch.sort(torch.cat([torch.linalg.svdvals(s[32 * d : 32 * d + 32]) ** 2 for s in slices])).values
        fits.append(fit_power_law(esd, "median"))
    assert result.alpha == pytest.approx((fits[0].alpha + fits[1].alpha) / 2, rel=1e-9)
    assert result.xmin == pytest.approx((fits[0].xmin + fits[1].xmin) / 2, rel=1e-9)
    assert result.ks_distance == pytest.approx((fits[0].ks_distance + fits[1].ks_distance) / 2, rel=1e-9)
    assert (result.windows, result.num_evals) == (18, 2 * 9 * 32)
    # A wide conv is used transposed, so its divisions are the same blocks.
    wide = farms_fit(slices.mT.contiguous(), "conv2d", FarmsSettings(), CPU, "median")
    assert wide.alpha == pytest.approx(result.alpha, rel=1e-12)


def test_conv1d_with_q_below_one_uses_the_first_columns():
    weight = torch.randn(24, 40, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    slices = weight.permute(2, 0, 1)  # [5, 24, 40] -> used as [5, 40, 24]
    result = farms_fit(slices, "conv1d", FarmsSettings(q=0.5), CPU, "median")
    # One division (40 // 24) of rows [0, 24) and the first 12 columns of each transposed slice.
    expected = torch.sort(torch.cat([torch.linalg.svdvals(s.mT[:24, :12]) ** 2 for s in slices])).values
    assert_same_spectrum(result.pooled, expected)
    assert result.alpha == pytest.approx(fit_power_law(expected, "median").alpha, rel=1e-9)
    assert (result.windows, result.num_evals) == (5, 60)


def test_tiny_pools_are_skipped_and_failed_fits_are_null():
    assert farms_fit(torch.randn(1, 2, 2, dtype=torch.float64), "linear", FarmsSettings(), CPU, "ks") is None
    conv = torch.randn(1, 4, 2, dtype=torch.float64)  # 2 divisions x 1 slice x 2 eigenvalues
    assert farms_fit(conv, "conv2d", FarmsSettings(), CPU, "ks") is None
    zeros = farms_fit(torch.zeros(1, 10, 10, dtype=torch.float64), "linear", FarmsSettings(), CPU, "ks")
    assert (zeros.alpha, zeros.xmin, zeros.ks_distance, zeros.candidates) == (None, None, None, set())
    assert (zeros.windows, zeros.num_evals) == (1, 10)


def test_farms_removes_the_aspect_ratio_bias_of_plain_alpha():
    # The same i.i.d. heavy-tailed law at aspect ratios 1, 2, 4 and 8: plain alpha drifts
    # with the shape (about 2.1 -> 4.0 here), FARMS with square windows does not (2.05 +- 0.02).
    g = torch.Generator().manual_seed(0)
    plain, farms = [], []
    for ratio in (1, 2, 4, 8):
        slices = student_t3((ratio * 200, 200), g)[None]
        plain.append(fit_power_law(CPU.pooled_eigenvalues(slices), "median").alpha)
        farms.append(farms_fit(slices, "linear", FarmsSettings(window=200), CPU, "median").alpha)
    plain_spread, farms_spread = max(plain) - min(plain), max(farms) - min(farms)
    assert plain_spread > 1.5
    assert farms_spread <= 0.5 * plain_spread
    assert farms_spread < 0.1


@pytest.mark.slow
def test_candidate_grid_is_close_to_the_exact_scan():
    # 100 windows of 210 x 210: a 21,000-eigenvalue pool, past the exact-scan limit.
    matrix = student_t3((600, 600), torch.Generator().manual_seed(0))
    result = farms_fit(matrix[None], "linear", FarmsSettings(window=210), CPU, "ks")
    assert result.candidates == {"grid"}
    kept = result.pooled[result.pooled > fit.KS_MIN_EIGENVALUE]
    assert kept.numel() > fit.EXACT_SCAN_LIMIT
    exact = fit._best_of(kept, torch.arange(kept.numel() - 1), "exact")
    assert result.alpha == pytest.approx(exact.alpha, abs=0.02)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_numbers():
    cuda = Eigensolver.create("cuda")
    matrix = student_t3((300, 500), torch.Generator().manual_seed(5))
    settings = FarmsSettings(window=120, steps=6)
    on_cpu = farms_fit(matrix[None], "linear", settings, CPU, "ks")
    on_gpu = farms_fit(matrix[None].to(cuda.device), "linear", settings, cuda, "ks")
    assert on_gpu.pooled.device.type == "cuda"
    assert_same_spectrum(on_gpu.pooled.cpu(), on_cpu.pooled)
    assert on_gpu.alpha == pytest.approx(on_cpu.alpha, rel=1e-9)


# --- end to end -----------------------------------------------------------------------------


def test_analyze_reports_every_farms_field(state_dict):
    report = analyze(state_dict, farms=FarmsSettings(window=40, steps=4))
    analysed = [layer for layer in report.layers if layer.status == "ok"]
    assert analysed
    for layer in analysed:
        for field in FARMS_FIELDS:
            assert getattr(layer, field) is not None, (layer.name, field)
    head = report.layer("head")  # 10 x 80: four 10 x 10 windows at columns 0, 23, 46, 69
    assert (head.farms_windows, head.farms_num_evals) == (4, 40)
    conv = report.layer("features.0")  # 32 x 16 x 3 x 3: 2 divisions x 9 slices of 16 x 16
    assert (conv.farms_windows, conv.farms_num_evals) == (18, 288)
    assert report.summary["mean_alpha_farms"] == pytest.approx(
        statistics.fmean(layer.alpha_farms for layer in analysed)
    )


def test_cli_json_carries_the_farms_fields(cli, tmp_path, state_dict):
    path = tmp_path / "model.safetensors"
    save_file(state_dict, path)
    result = cli("analyze", path, "--farms", "--farms-window", "40", "--farms-steps", "4", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["farms"] == {"window": 40, "q": 1.0, "steps": 4}
    expected = analyze(state_dict, farms=FarmsSettings(window=40, steps=4))
    for layer in data["layers"]:
        for field in FARMS_FIELDS:
            assert layer[field] == pytest.approx(getattr(expected.layer(layer["name"]), field), rel=1e-12)
