"""`htsr diagnose MODEL_A MODEL_B --data ...`: the MD tree's features computed from two digits MLPs
(seeds of one configuration), diagnosed as `--features` would be; every bad input is exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.conftest import assert_user_error
from tests.landscape.digits import write_digits

pytest.importorskip("sklearn")

QUICK = ["--max-batches", "2", "--batch-size", "64", "--max-iterations", "5", "--curve-steps", "4"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64-32-10 MLPs: a thread pool costs more than it saves
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"))


def test_two_models_give_the_same_diagnosis_as_their_landscape_features(cli, digits, tmp_path):
    models = [digits["seed0"], digits["seed1"], "--trust-pickle", "--data", digits["npz"], *QUICK]
    computed = cli("diagnose", *models, "-f", "json")
    assert computed.exit_code == 0, computed.stderr
    diagnosis = json.loads(computed.stdout)
    assert diagnosis["schema"] == "htsr.diagnosis/1"

    landscape = cli("landscape", *models, "--metrics", "trace,connectivity", "-f", "json")
    assert landscape.exit_code == 0, landscape.stderr
    features = json.loads(landscape.stdout)["pair"]["md_tree_features"]
    expected = {name: features[name] for name in ("train_error", "mode_connectivity_peak", "hessian_t")}
    assert diagnosis["features"] == pytest.approx(expected)
    assert diagnosis["features"]["mode_connectivity_peak"] <= 0

    written = tmp_path / "features.json"
    written.write_text(json.dumps(expected))
    from_file = cli("diagnose", "--features", written, "-f", "json")
    assert from_file.exit_code == 0, from_file.stderr
    assert json.loads(from_file.stdout)["answers"] == diagnosis["answers"]
    assert cli("diagnose", *models, "-f", "json").stdout == computed.stdout  # seeded


def test_table_shows_every_answer_with_its_path(cli, digits):
    result = cli("diagnose", digits["seed0"], digits["seed1"], "--trust-pickle", "--data", digits["csv"], *QUICK)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "training configurations on this leaf agree" in out or "no training configuration reached this leaf" in out
    assert "train_error" in out and "Tree: fitted on" in out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--train-error", "3"], "--train-error does not apply"),
        (["--fit", "table.csv"], "--fit does not apply"),
    ],
)
def test_features_and_models_exclude_each_other(cli, digits, extra, needle):
    result = cli("diagnose", digits["seed0"], digits["seed1"], "--trust-pickle", "--data", digits["npz"], *extra)
    assert_user_error(result, needle)


def test_bad_inputs_are_one_line(cli, digits, tmp_path):
    assert_user_error(cli("diagnose", digits["seed0"], "--trust-pickle", "--data", digits["npz"]), "give two models")
    assert_user_error(cli("diagnose", digits["seed0"], digits["seed1"], "--trust-pickle"), "--data")
    assert_user_error(cli("diagnose", "--data", digits["npz"], "--train-error", "3"), "give MODEL_A MODEL_B")
    assert_user_error(cli("diagnose", digits["seed0"], digits["seed1"], "--data", digits["npz"]), "--trust-pickle")
    wide = tmp_path / "wide.pth"
    torch.save(nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)), wide)
    assert_user_error(cli("diagnose", digits["seed0"], wide, "--trust-pickle", "--data", digits["npz"], *QUICK), "different architectures")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    assert_user_error(cli("diagnose", digits["seed0"], digits["seed1"], "--trust-pickle", "--data", empty), "empty")
    assert_user_error(cli("diagnose", digits["seed0"], digits["seed1"], "--trust-pickle", "--data", digits["npz"], "--max-batches", "0"), "--max-batches")
