"""`htsr allocate bits` on the command line: formats, exports, and one-line errors."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import FIXTURES, assert_user_error
from tests.results.test_schemas import validate

TINY_LLAMA = FIXTURES / "tiny-llama"


@pytest.fixture(scope="module")
def saved_report(tmp_path_factory):
    from typer.testing import CliRunner

    from htsr_cli.cli.app import app

    path = tmp_path_factory.mktemp("bits") / "report.json"
    result = CliRunner().invoke(app, ["analyze", str(TINY_LLAMA), "--xmin", "peak", "-f", "json", "-o", str(path), "-q"])
    assert result.exit_code in (0, 1), result.output
    return path


def test_table_shows_every_matrix_and_the_average(cli, saved_report):
    result = cli("allocate", "bits", saved_report, "--average", "3.5")
    assert result.exit_code == 0, result.output
    assert "weighted mean 3.5000 bits (average 3.5) over 28 matrices" in result.stdout
    assert "model.layers.3.mlp.down_proj" in result.stdout and "embedding, not quantized" in result.stdout


def test_json_is_the_library_plan_and_validates(cli, saved_report, tmp_path):
    from htsr_cli.allocations.bits import BitsSettings, bits_plan
    from htsr_cli.results.report import load_report

    out = tmp_path / "bits.json"
    result = cli("allocate", "bits", saved_report, "--average", "3", "--choices", "2,3,4,8", "--unit", "block", "-f", "json", "-o", out)
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    validate(plan)
    expected = bits_plan(load_report(saved_report), BitsSettings(3.0, (2, 3, 4, 8), unit="block"), model_type="llama")
    assert plan == json.loads(json.dumps(expected))
    assert plan["model_type"] == "llama"  # config.json beside the report's checkpoint


def test_a_checkpoint_is_analyzed_with_the_peak_rule(cli):
    result = cli("allocate", "bits", TINY_LLAMA, "--average", "4", "-f", "csv", "-q")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.strip().splitlines()
    assert header == "name,tensor,kind,block,params,alpha,unit,score,stored_bits,bits,note"
    assert len(rows) == 30


def test_exports_come_out_as_files(cli, saved_report, tmp_path):
    types = tmp_path / "tensor-types.txt"
    result = cli("allocate", "bits", saved_report, "--average", "3.5", "-f", "llama-cpp", "-o", types)
    assert result.exit_code == 0, result.output
    lines = types.read_text().split()
    assert len(lines) == 28 and lines[0] == r"^blk\.0\.attn_q\.weight$=Q3_K"
    assert "llama-quantize --tensor-type-file" in result.stderr
    recipe = tmp_path / "recipe.yaml"
    result = cli("allocate", "bits", saved_report, "--average", "3.5", "--group-size", "4", "-f", "llm-compressor", "--recipe", "rtn", "-o", recipe)
    assert result.exit_code == 0, result.output
    groups = yaml.safe_load(recipe.read_text())["quant_stage"]["quant_modifiers"]["QuantizationModifier"]["config_groups"]
    assert sum(len(group["targets"]) for group in groups.values()) == 28


@pytest.mark.parametrize(("args", "needle"), [
    (["--average", "9"], "--average 9.0: must lie within the choices' range [2, 8]"),
    (["--average", "1"], "--average 1.0: must lie within the choices' range [2, 8]"),
    (["--average", "4", "--choices", "2,x"], "--choices 2,x: must be whole numbers of bits in 1..16"),
    (["--average", "4", "--choices", "0,4"], "--choices 0,4: must be whole numbers of bits in 1..16"),
    (["--average", "4", "--choices", "4,17"], "--choices 4,17: must be whole numbers of bits in 1..16"),
    (["--average", "7", "--choices", "7", "-f", "llama-cpp"], "no llama.cpp type holds 7 bits"),
])
def test_bad_settings_are_one_line_and_exit_2(cli, saved_report, args, needle):
    assert_user_error(cli("allocate", "bits", saved_report, *args), needle)


def test_an_output_over_the_input_is_refused(cli, saved_report):
    assert_user_error(cli("allocate", "bits", saved_report, "--average", "4", "-o", saved_report), "-o")


def test_a_checkpoint_quantized_to_fewer_bits_than_asked_is_refused(cli, tmp_path):
    plan = tmp_path / "bits.json"
    assert cli("allocate", "bits", TINY_LLAMA, "--average", "3", "--choices", "3", "--group-size", "4", "-f", "json", "-o", plan, "-q").exit_code == 0
    quantized = tmp_path / "w3"
    result = cli("quantize", TINY_LLAMA, "--plan", plan, "-o", quantized, "-q")
    assert result.exit_code == 0, result.output
    assert_user_error(
        cli("allocate", "bits", quantized, "--average", "4", "--choices", "4,8", "-q"),
        "is already quantized to 3 bits, fewer than the smallest choice 4",
    )
    assert_user_error(
        cli("allocate", "bits", quantized, "--average", "4", "--choices", "2,3,4,8", "-q"),
        "is already quantized: its matrices hold at most 3.00 bits on average, fewer than --average 4.0",
    )
