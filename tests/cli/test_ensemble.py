"""`htsr ensemble`: three digits MLPs (seeds), the document against its schema and against the
library's numbers, the table, the plot, and every bad input as one line with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.conftest import assert_user_error
from tests.landscape.digits import digits_arrays, train_mlp, write_digits
from tests.results.test_schemas import errors, validate

pytest.importorskip("sklearn")

QUICK = ["--max-batches", "2", "--batch-size", "64", "--ascent-steps", "2"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64-32-10 MLPs: a thread pool costs more than it saves
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    paths = write_digits(folder)
    torch.set_num_threads(1)
    paths["seed2"] = folder / "mlp-seed2.pth"
    torch.save(train_mlp(*digits_arrays(), seed=2), paths["seed2"])
    return paths


def members(digits):
    return [digits["seed0"], digits["seed1"], digits["seed2"], "--trust-pickle"]


def test_three_members_give_a_valid_document_with_the_library_numbers(cli, digits):
    from htsr_cli.landscape import SharpnessSettings, adaptive_sharpness, ensemble_diversity

    result = cli("ensemble", *members(digits), "--data", digits["npz"], *QUICK, "-f", "json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    validate(document)
    assert [m["model"] for m in document["members"]] == [str(digits[f"seed{s}"]) for s in range(3)]
    assert document["data"]["used"] == 128

    features, labels = digits_arrays()
    batches = [(torch.from_numpy(features[i:i + 64]), torch.from_numpy(labels[i:i + 64])) for i in (0, 64)]
    models = [torch.load(digits[f"seed{s}"], weights_only=False) for s in range(3)]
    settings = SharpnessSettings(ascent_steps=2)
    for member, model in zip(document["members"], models):
        assert member["sharpness"] == pytest.approx(adaptive_sharpness(model, batches, settings=settings).sharpness)
    diversity = ensemble_diversity(models, batches)
    assert document["diversity"]["disagreement"] == pytest.approx(diversity.disagreement)
    assert document["diversity"]["kl"] == pytest.approx(diversity.kl)
    assert document["ensemble"]["accuracy"] == pytest.approx(100 - diversity.ensemble_error)
    for index, member in enumerate(document["members"]):
        assert member["disagreement"] == pytest.approx(sum(diversity.pairwise_disagreement[index]) / 2)
        assert member["accuracy"] == pytest.approx(100 - diversity.member_errors[index])
    assert cli("ensemble", *members(digits), "--data", digits["npz"], *QUICK, "-f", "json").stdout == result.stdout  # seeded


def test_table_and_plot(cli, digits, tmp_path):
    plot = tmp_path / "picture.png"
    result = cli("ensemble", *members(digits), "--data", digits["csv"], *QUICK, "--plot", plot)
    assert result.exit_code == 0, result.stderr
    assert "ensemble (mean prediction)" in result.stdout and "mlp-seed2.pth" in result.stdout and "KL" in result.stdout
    assert plot.read_bytes().startswith(b"\x89PNG")
    svg = tmp_path / "picture.svg"
    assert cli("ensemble", *members(digits), "--data", digits["csv"], *QUICK, "--plot", svg, "-q").exit_code == 0
    assert b"<svg" in svg.read_bytes()


def test_the_schema_is_strict(cli, digits):
    document = json.loads(cli("ensemble", digits["seed0"], digits["seed1"], "--trust-pickle", "--data", digits["npz"], *QUICK, "-f", "json").stdout)
    validate(document)
    assert errors({**document, "extra": 1}, "ensemble/1")
    assert errors({**document, "members": document["members"][:1]}, "ensemble/1")


def test_bad_inputs_are_one_line(cli, digits, tmp_path):
    assert_user_error(cli("ensemble", digits["seed0"], "--trust-pickle", "--data", digits["npz"]), "at least two models")
    assert_user_error(cli("ensemble", *members(digits)), "--data")
    assert_user_error(cli("ensemble", digits["seed0"], digits["seed1"], "--data", digits["npz"]), "--trust-pickle")
    assert_user_error(cli("ensemble", *members(digits), "--data", digits["npz"], "--plot", tmp_path / "p.gif"), ".png, .svg or .pdf")
    assert_user_error(cli("ensemble", *members(digits), "--data", digits["npz"], "--plot", digits["npz"]), "--plot")
    five = tmp_path / "five.pth"
    torch.save(nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 5)), five)
    labels = tmp_path / "small.npz"
    import numpy as np

    features, classes = digits_arrays()
    np.savez(labels, x=features[:50], y=classes[:50] % 5)
    assert_user_error(cli("ensemble", digits["seed0"], five, "--trust-pickle", "--data", labels), "different numbers of classes")
    assert_user_error(cli("ensemble", *members(digits), "--data", digits["npz"], "--rho", "0"), "rho")
