"""`htsr describe`: its formats, and every bad input as one line and exit 2."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURES, assert_user_error
from tests.results.test_schemas import validate

TINY_CNN = FIXTURES / "tiny-cnn-trained.pth"
TINY_LLAMA = FIXTURES / "tiny-llama"


def test_cli_formats(cli, tmp_path):
    result = cli("describe", TINY_LLAMA, "--min-evals", "40", "-f", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    validate(document)
    assert document["summary"]["skipped"] == 8  # k_proj and v_proj (32 eigenvalues) of four blocks
    result = cli("describe", TINY_CNN, "-f", "csv")
    lines = result.stdout.splitlines()
    assert lines[0] == "name,tensor,kind,shape,num_evals,params,block,storage,dtype,solve_bytes,status,reason"
    assert lines[1].startswith("conv1,conv1.weight,conv2d,32x3x3x3,27,864,,float32,float32,")
    result = cli("describe", TINY_CNN, "-f", "markdown")
    assert "| conv1 | conv2d | 32x3x3x3 | 27 | 864 | - | float32 | analyze | - |" in result.stdout
    assert "6 of 6 weight matrices to analyze" in result.stdout
    out = tmp_path / "table.txt"
    result = cli("describe", TINY_CNN, "--layers", "fc", "-o", out)
    assert result.exit_code == 0, result.output
    table = out.read_text()
    assert "fc3" in table and "conv1" not in table and "read to list: tiny-cnn-trained.pth: its pickle" in table


@pytest.mark.parametrize(("args", "needles"), [
    (["missing.pth"], ["missing.pth: no such file or directory"]),
    (["README.md"], ["unknown checkpoint format '.md'"]),
    ([TINY_CNN, "--layers", "("], ["--layers", "invalid regular expression"]),
    ([TINY_CNN, "--layers", "nothing-like-this"], ["matches none of the 6 weight matrices"]),
    ([TINY_CNN, "--min-evals", "1"], ["--min-evals 1: must be at least 2"]),
])
def test_bad_inputs_are_one_line_and_exit_2(cli, args, needles):
    assert_user_error(cli("describe", *args), *needles)


def test_damaged_checkpoints_are_one_line_and_exit_2(cli, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    assert_user_error(cli("describe", garbage), "not a valid safetensors file")
    pickle = tmp_path / "garbage.pth"
    pickle.write_bytes(b"not a pickle at all")
    assert_user_error(cli("describe", pickle), "garbage.pth")
