"""htsr landscape on the command line: digits MLPs (two seeds), a causal LM, a sequence classifier,
the document against its schema, and every bad input as one line with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fixtures.language_models import TINY_WORDS
from tests.conftest import assert_user_error, tiny_text, tiny_tokenizer
from tests.landscape.digits import write_digits
from tests.results.test_schemas import validate

pytest.importorskip("sklearn")

QUICK = ["--max-batches", "2", "--batch-size", "64", "--max-iterations", "5", "--ascent-steps", "2", "--curve-steps", "4"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"))


def test_two_seeds_give_every_metric_and_a_valid_document(cli, digits):
    args = ["landscape", digits["seed0"], digits["seed1"], "--trust-pickle", "--data", digits["npz"], *QUICK,
            "--metrics", "hessian,trace,density,sharpness,connectivity,cka,diversity", "--density-steps", "6", "--top-k", "2", "-f", "json"]
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    validate(document)
    assert document["data"]["used"] == 128 and document["data"]["samples"] == 1797
    for entry in document["models"]:
        assert entry["error"] < 20  # trained: the digits are easy
        assert len(entry["hessian"]["top_eigenvalues"]) == 2
        assert entry["hessian"]["top_eigenvalues"][0] > 0 and entry["sharpness"] >= 0
        assert sum(entry["hessian"]["density"]["weights"][0]) == pytest.approx(1.0)
    pair = document["pair"]
    assert 0 < pair["cka"] <= 1
    bezier = pair["connectivity"]["bezier"]
    assert bezier["error"][0] == pytest.approx(document["models"][0]["error"])
    assert pair["md_tree_features"]["mode_connectivity_peak"] == pytest.approx(-max(bezier["error"][1:-1]))
    assert pair["md_tree_features"]["CKA"] == pair["cka"]
    again = cli(*args)
    assert again.stdout == result.stdout  # seeded: the same numbers every run


def test_table_output_names_the_models_and_the_paths(cli, digits):
    result = cli("landscape", digits["seed0"], digits["seed1"], "--trust-pickle", "--data", digits["csv"], *QUICK)
    assert result.exit_code == 0, result.stderr
    assert "mlp-seed0.pth" in result.stdout and "bezier" in result.stdout and "mode_connectivity_peak" in result.stdout
    assert "CKA (linear)" in result.stdout


def test_jsonl_data_and_one_model(cli, digits):
    result = cli("landscape", digits["seed0"], "--trust-pickle", "--data", digits["jsonl"], "--max-batches", "1",
                 "--metrics", "trace", "--max-iterations", "3", "-f", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    validate(document)
    assert document["pair"] is None and document["models"][0]["hessian"]["trace_probes"] <= 3


def test_causal_lm_on_a_text_file(cli, tiny_lms, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(tiny_text(400))
    result = cli("landscape", tiny_lms["llama"], "--text", text, "--seq-len", "16", "--batch-size", "4", "--max-batches", "1",
                 "--metrics", "hessian,trace,sharpness", "--max-iterations", "2", "--ascent-steps", "1", "-f", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    validate(document)
    assert document["objective"] == "next-token" and document["data"]["unit"] == "windows"
    assert document["data"]["used"] == 4


def test_sequence_classifier_on_texts(cli, tmp_path):
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(TINY_WORDS) + 5, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, max_position_embeddings=64, num_labels=3)
    directory = tmp_path / "classifier"
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(TINY_WORDS[i : i + 5]), "label": i % 3}) + "\n" for i in range(12)))
    result = cli("landscape", directory, "--data", data, "--batch-size", "6", "--metrics", "trace,sharpness",
                 "--max-iterations", "2", "--ascent-steps", "1", "-f", "json")
    assert result.exit_code == 0, result.stderr
    validate(json.loads(result.stdout))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "w1 w2", "label": 3}) + "\n")
    assert_user_error(cli("landscape", directory, "--data", bad), "label 3 is out of range", "3 classes")


# ---------------------------------------------------------------- mistakes: one line, exit 2


def test_features_that_do_not_fit_the_model(cli, digits, tmp_path):
    narrow = tmp_path / "narrow.npz"
    np.savez(narrow, x=np.zeros((10, 32), np.float32), y=np.zeros(10, np.int64))
    assert_user_error(cli("landscape", digits["seed0"], "--trust-pickle", "--data", narrow), "samples of shape (32,) do not fit")


def test_labels_out_of_range(cli, digits, tmp_path):
    wrong = tmp_path / "labels.npz"
    np.savez(wrong, x=np.zeros((10, 64), np.float32), y=np.full(10, 12, np.int64))
    assert_user_error(cli("landscape", digits["seed0"], "--trust-pickle", "--data", wrong), "label 12 is out of range", "10 classes")


def test_models_of_different_architectures(cli, digits, tmp_path):
    wider = tmp_path / "wider.pth"
    torch.save(nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)), wider)
    assert_user_error(cli("landscape", digits["seed0"], wider, "--trust-pickle", "--data", digits["npz"]), "different architectures")


@pytest.mark.parametrize("content", ["", "pixel0,label\n"])
def test_empty_data_files(cli, digits, tmp_path, content):
    empty = tmp_path / "empty.csv"
    empty.write_text(content)
    assert_user_error(cli("landscape", digits["seed0"], "--trust-pickle", "--data", empty), "empty.csv")


def test_empty_npz_and_jsonl(cli, digits, tmp_path):
    npz = tmp_path / "empty.npz"
    np.savez(npz, x=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64))
    assert_user_error(cli("landscape", digits["seed0"], "--trust-pickle", "--data", npz), "holds no samples")
    jsonl = tmp_path / "blank.jsonl"
    jsonl.write_text("\n\n")
    assert_user_error(cli("landscape", digits["seed0"], "--trust-pickle", "--data", jsonl), "holds no samples")


def test_torch_files_need_trust_and_a_whole_model(cli, digits, tmp_path):
    assert_user_error(cli("landscape", digits["seed0"], "--data", digits["npz"]), "--trust-pickle")
    state = tmp_path / "state.pth"
    torch.save(torch.load(digits["seed0"], weights_only=False).state_dict(), state)
    assert_user_error(cli("landscape", state, "--trust-pickle", "--data", digits["npz"]), "cannot run a forward pass")
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"x")
    assert_user_error(cli("landscape", weights, "--data", digits["npz"]), "state dict", "cannot run a forward pass")


def test_option_mistakes(cli, digits, tmp_path):
    model = digits["seed0"]
    assert_user_error(cli("landscape", model, "--trust-pickle"), "--data FILE", "--text FILE")
    assert_user_error(cli("landscape", model, "--trust-pickle", "--data", digits["npz"], "--metrics", "cka"), "needs two models")
    assert_user_error(cli("landscape", model, "--trust-pickle", "--data", digits["npz"], "--metrics", "hessian,curvature"), "unknown 'curvature'")
    assert_user_error(cli("landscape", model, "--trust-pickle", "--data", digits["npz"], "--top-k", "0"), "--top-k 0")
    assert_user_error(cli("landscape", model, "--trust-pickle", "--data", digits["npz"], "--max-batches", "0"), "--max-batches")
    assert_user_error(cli("landscape", model, "--trust-pickle", "--data", tmp_path / "missing.npz"), "no such file")
    text = tmp_path / "text.txt"
    text.write_text("w1 w2 w3")
    assert_user_error(cli("landscape", model, "--trust-pickle", "--text", text), "measured on --data FILE")
    assert_user_error(cli("landscape", model, tmp_path, "--trust-pickle", "--data", digits["npz"]), "models of one kind")
    assert_user_error(cli("landscape", model, model, model, "--trust-pickle", "--data", digits["npz"]), "got 3")


def test_image_classifier_on_pixel_arrays(cli, tmp_path):
    import transformers

    from tests.landscape.digits import digits_arrays

    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32, num_labels=10)
    directory = tmp_path / "vit"
    transformers.ViTForImageClassification(config).save_pretrained(directory)
    features, labels = digits_arrays()
    images = tmp_path / "images.npz"
    np.savez(images, pixel_values=features[:40].reshape(-1, 1, 8, 8), labels=labels[:40])
    result = cli("landscape", directory, "--data", images, "--batch-size", "20", "--metrics", "hessian,trace",
                 "--max-iterations", "2", "-f", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    validate(document)
    assert document["data"]["used"] == 40 and document["models"][0]["error"] > 50  # an untrained head
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=features[:40], y=labels[:40])
    assert_user_error(cli("landscape", directory, "--data", flat), "samples of shape (64,) do not fit", "(1, 8, 8)")


def test_the_schema_is_strict(cli, digits):
    from tests.results.test_schemas import errors

    result = cli("landscape", digits["seed0"], "--trust-pickle", "--data", digits["npz"], "--max-batches", "1",
                 "--metrics", "sharpness", "--ascent-steps", "1", "-f", "json")
    document = json.loads(result.stdout)
    assert not errors(document, "landscape/1")
    document["models"][0]["surprise"] = 1
    assert errors(document, "landscape/1")
    document["models"][0].pop("surprise")
    document["settings"]["metrics"] = ["curvature"]
    assert errors(document, "landscape/1")


def test_a_datasets_directory_without_the_datasets_package_is_one_line(cli, digits, tmp_path):
    import importlib.util

    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed: the directory would be read")
    folder = tmp_path / "saved"
    folder.mkdir()
    assert_user_error(cli("landscape", digits["seed0"], "--trust-pickle", "--data", folder), "needs the `datasets` package")
