"""--mp-fit, --randomize and --detx through the pipeline, the report, the CLI and to_pandas."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from htsr_cli import analyze
from htsr_cli.cli.app import app
from htsr_cli.engine.pipeline import shuffled_spectra
from htsr_cli.errors import InvalidSetting
from htsr_cli.results.report import RMT_FIELDS, Report
from htsr_cli.settings import AnalyzeSettings
from htsr_cli.spectra.matrices import matrix_specs
from htsr_cli.spectra.solver import Eigensolver
from tests.conftest import FIXTURES
from tests.results.test_schemas import validate

TINY_CNN = FIXTURES / "tiny-cnn-trained.pth"
ALL_PASSES = {"mp_fit": True, "randomize": True, "detx": True}
RMT_KEYS = {key for keys in RMT_FIELDS.values() for key in keys}


@pytest.fixture(scope="module")
def plain() -> Report:
    return analyze(TINY_CNN)


@pytest.fixture(scope="module")
def with_passes() -> Report:
    return analyze(TINY_CNN, AnalyzeSettings(**ALL_PASSES, seed=3))


def test_reports_without_the_passes_carry_none_of_their_keys(plain):
    document = plain.to_json()
    assert not {"mp_fit", "randomize", "detx"} & set(document["settings"])
    for layer in document["layers"]:
        assert not RMT_KEYS & set(layer)
    assert not RMT_KEYS & set(plain.to_pandas().columns)


def test_reports_with_the_passes_validate_and_round_trip(with_passes, plain):
    document = with_passes.to_json()
    validate(document)
    assert document["settings"]["randomize"] == {"seed": 3}
    assert document["settings"]["mp_fit"] is True and document["settings"]["detx"] is True
    for layer in document["layers"]:
        assert RMT_KEYS <= set(layer)
    assert Report.from_json(json.loads(with_passes.dumps())).dumps() == with_passes.dumps()
    # The passes add numbers; they change none of the others.
    for ours, theirs in zip(with_passes.layers, plain.layers):
        assert ours.alpha == theirs.alpha and ours.xmin == theirs.xmin
    frame = with_passes.to_pandas()
    assert {"sigma_mp", "rand_distance", "rand_num_spikes", "detx_num"} <= set(frame.columns)


def test_a_seed_repeats_its_shuffles_and_another_seed_does_not(with_passes):
    again = analyze(TINY_CNN, AnalyzeSettings(**ALL_PASSES, seed=3))
    other = analyze(TINY_CNN, AnalyzeSettings(**ALL_PASSES, seed=4))
    assert again.dumps().split('"summary"')[0] == with_passes.dumps().split('"summary"')[0]
    assert [layer.rand_distance for layer in other.layers] != [layer.rand_distance for layer in with_passes.layers]


def test_one_pass_writes_only_its_own_fields():
    report = analyze(TINY_CNN, AnalyzeSettings(detx=True))
    layer = report.to_json()["layers"][0]
    assert set(RMT_FIELDS["detx"]) <= set(layer)
    assert not (set(RMT_FIELDS["mp_fit"]) | set(RMT_FIELDS["randomize"])) & set(layer)


def test_a_small_layer_pools_five_shuffles_solved_by_the_eigensolver():
    weight = torch.randn(40, 64)
    [spec] = matrix_specs("fc.weight", tuple(weight.shape), weight.dtype, 10, "float32", None, None)
    spectra = shuffled_spectra(weight.unsqueeze(0), spec, 0, Eigensolver.create("cpu", "float64"), 1.0)
    assert len(spectra) == 5 and all(values.shape == (40,) for values in spectra)
    # The Frobenius norm survives the shuffle: every shuffled ESD sums to the same total.
    for values in spectra:
        assert values.sum() == pytest.approx(float((weight.double() ** 2).sum()), rel=1e-9)


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True])
def test_a_bad_seed_is_refused(seed):
    with pytest.raises(InvalidSetting, match="seed"):
        AnalyzeSettings(randomize=True, seed=seed)


def test_a_bad_seed_on_the_command_line_is_one_line_and_exit_code_2():
    result = CliRunner().invoke(app, ["analyze", str(TINY_CNN), "--randomize", "--seed", "-1"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "seed" in result.stderr


def test_the_table_shows_the_passes_columns_only_when_analysed_with_them(tmp_path):
    runner = CliRunner()
    with_columns = runner.invoke(app, ["analyze", str(TINY_CNN), "--mp-fit", "--randomize", "--detx", "--format", "csv"])
    without = runner.invoke(app, ["analyze", str(TINY_CNN), "--format", "csv"])
    assert with_columns.exit_code == 0 and without.exit_code == 0
    header = with_columns.stdout.splitlines()[0].split(",")
    assert {"sigma_mp", "rand_distance", "trap_evals", "detx_num"} <= set(header)
    assert not RMT_KEYS & set(without.stdout.splitlines()[0].split(","))


def test_the_terminal_table_drops_the_passes_columns_first(with_passes):
    import io

    from rich.console import Console

    from htsr_cli.render.tables import report_table

    def headers(width: int) -> str:
        console = Console(file=io.StringIO(), width=width, no_color=True)
        console.print(report_table(with_passes, width))
        return next(line for line in console.file.getvalue().splitlines() if line.startswith("┃"))

    wide, narrow = headers(250), headers(130)
    assert all(header in wide for header in ("spikes", "mp_softrank", "rand_dist", "traps", "detX_num"))
    assert "detX_num" not in narrow and "stable_rank" in narrow


def test_the_passes_are_analyze_keywords_too(with_passes):
    report = analyze(TINY_CNN, mp_fit=True, randomize=True, seed=3, detx=True)
    assert report.settings == with_passes.settings
    assert [layer.rand_distance for layer in report.layers] == [layer.rand_distance for layer in with_passes.layers]


def test_the_memory_budget_counts_the_shuffled_copy_and_its_permutation():
    from htsr_cli.engine.pipeline import SHUFFLE_BYTES_PER_ELEMENT, within_budget, work_bytes

    [spec] = matrix_specs("fc.weight", (256, 512), torch.float32, 10, "float32", None, None)
    solver = Eigensolver.create("cpu", "mixed")
    plain, shuffled = AnalyzeSettings(), AnalyzeSettings(randomize=True)
    assert work_bytes(spec, shuffled, solver) - work_bytes(spec, plain, solver) == 256 * 512 * SHUFFLE_BYTES_PER_ELEMENT
    # A budget that holds the plain solve but not the shuffle's copy skips the layer only with --randomize.
    budget = (work_bytes(spec, plain, solver), "--max-memory")
    assert within_budget(spec, plain, solver, budget).skip_reason is None
    assert "over the memory budget" in within_budget(spec, shuffled, solver, budget).skip_reason
