"""`htsr convert`: a GGUF file dequantized by transformers into a safetensors directory that prune
reads; the record against its schema; --overwrite; and every bad input as one line, exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fixtures.language_models import write_tiny_language_model
from fixtures.quantized import write_gguf
from tests.conftest import assert_user_error
from tests.results.test_schemas import validate

pytest.importorskip("gguf")
pytest.importorskip("accelerate")  # transformers' GGUF loader


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    model = write_tiny_language_model(root / "lm", "llama")
    return model, write_gguf(model, root / "tiny.Q8_0.gguf", "Q8_0", architecture="llama", loadable=True)


def test_convert_dequantizes_into_a_directory_prune_reads(cli, gguf_file, tmp_path):
    model, gguf = gguf_file
    result = cli("convert", gguf, "-o", tmp_path / "f32")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "f32" / "htsr-convert.json").read_text())
    validate(record)
    assert record["architecture"] == "llama" and record["dtype"] == "float32"
    assert {entry["path"] for entry in record["files"]["written"]} >= {"config.json", "model.safetensors"}
    original, converted = load_file(model / "model.safetensors"), load_file(tmp_path / "f32" / "model.safetensors")
    assert set(converted) == set(original)  # llama.cpp's names mapped back, q/k rows un-permuted
    for name, weight in original.items():
        error = (converted[name] - weight).norm() / weight.norm()
        assert converted[name].dtype == torch.float32 and error < 0.02, (name, float(error))  # Q8_0's rounding
    pruned = cli("prune", tmp_path / "f32", "--target", "0.5", "-o", tmp_path / "pruned", "-q")
    assert pruned.exit_code == 0, pruned.output
    again = cli("convert", gguf, "-o", tmp_path / "f32")
    assert_user_error(again, "exists and is not empty; pass --overwrite")
    assert cli("convert", gguf, "-o", tmp_path / "f32", "--overwrite", "-q").exit_code == 0


def test_prune_of_a_gguf_file_says_to_convert_it(cli, gguf_file, tmp_path):
    _, gguf = gguf_file
    result = cli("prune", gguf, "--target", "0.5", "-o", tmp_path / "out")
    assert_user_error(result, "a GGUF file cannot be pruned in place", f"htsr convert {gguf} -o DIR")
    assert list(tmp_path.iterdir()) == []


def test_smooth_of_a_gguf_file_says_to_convert_it_too(cli, gguf_file, tmp_path):
    _, gguf = gguf_file
    result = cli("smooth", gguf, "--percent", "0.5", "-o", tmp_path / "out")
    assert_user_error(result, "a GGUF file cannot be smoothed in place", f"htsr convert {gguf} -o DIR`, then smooth DIR")
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_are_one_line(cli, gguf_file, tmp_path):
    model, gguf = gguf_file
    assert_user_error(cli("convert", model / "model.safetensors", "-o", tmp_path / "o"), "htsr convert reads a .gguf file")
    assert_user_error(cli("convert", tmp_path / "none.gguf", "-o", tmp_path / "o"), "none.gguf: no such file")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all")
    assert_user_error(cli("convert", garbage, "-o", tmp_path / "o"), "garbage.gguf: transformers cannot read this GGUF file")
    assert_user_error(cli("convert", gguf, "-o", gguf), "-o")  # the input itself
    assert not (tmp_path / "o").exists()


def test_a_tied_lm_head_is_stored_once_under_the_embeddings_name():
    from torch import nn

    from htsr_cli.pruning.convert import _untied

    model = nn.ModuleDict({"embed_tokens": nn.Embedding(10, 4), "lm_head": nn.Linear(4, 10, bias=False)})
    model["lm_head"].weight = model["embed_tokens"].weight
    assert list(_untied(model.state_dict())) == ["embed_tokens.weight"]
    model["lm_head"].weight = nn.Parameter(torch.randn(10, 4))  # untied: both kept
    assert list(_untied(model.state_dict())) == ["embed_tokens.weight", "lm_head.weight"]
