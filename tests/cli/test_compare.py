"""`htsr compare` on a checkpoint with one layer replaced, and its formats from saved reports."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def one_layer_replaced(tmp_path_factory):
    """The trained CNN's linear layers as safetensors, and a copy whose fc2 is Gaussian noise."""
    folder = tmp_path_factory.mktemp("compare")
    trained = torch.load(FIXTURES / "tiny-cnn-trained.pth", weights_only=True)
    state = {key: value for key, value in trained.items() if key.startswith("fc")}
    save_file(state, folder / "a.safetensors")
    weight = state["fc2.weight"]
    state["fc2.weight"] = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std()
    save_file(state, folder / "b.safetensors")
    return folder


def test_the_replaced_layer_comes_first_and_the_rest_do_not_move(cli, one_layer_replaced, monkeypatch):
    monkeypatch.chdir(one_layer_replaced)
    result = cli("compare", "a.safetensors", "b.safetensors", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    names = [entry["name"] for entry in data["layers"]]
    deltas = [entry["delta"] for entry in data["layers"]]
    assert names == ["fc2", "fc1", "fc3"]
    assert deltas[0] > 1.0  # noise: a Marchenko-Pastur bulk, no heavy tail
    assert deltas[1:] == [0.0, 0.0]  # the same matrices give bit-identical alphas
    assert data["summary"]["largest_change"]["name"] == "fc2"


def test_formats_from_saved_reports(cli, one_layer_replaced, monkeypatch):
    monkeypatch.chdir(one_layer_replaced)
    for name in ("a", "b"):
        assert cli("analyze", f"{name}.safetensors", "--format", "json", "-o", f"{name}.json").exit_code == 0
    as_json = json.loads(cli("compare", "a.json", "b.json", "--format", "json").stdout)

    rows = list(csv.DictReader(io.StringIO(cli("compare", "a.json", "b.json", "--format", "csv").stdout)))
    assert list(rows[0]) == ["layer", "alpha_a", "alpha_b", "delta", "status"]  # the table's headers too
    assert [(row["layer"], float(row["delta"])) for row in rows] == [
        (entry["name"], entry["delta"]) for entry in as_json["layers"]
    ]

    markdown = cli("compare", "a.json", "b.json", "--format", "markdown").stdout
    assert markdown.startswith("## htsr compare (alpha)\n\n- A = a.safetensors\n- B = b.safetensors\n")
    assert "| fc1 | " in markdown and "| 0.000 | compared |" in markdown

    table = cli("compare", "a.json", "b.json", "-o", "table.txt")
    assert table.exit_code == 0
    text = (one_layer_replaced / "table.txt").read_text()
    assert "3 layers compared" in text and "largest fc2 +" in text

    assert cli("compare", "a.json", "missing.json").exit_code == 2
    farms = cli("compare", "a.json", "b.json", "--metric", "alpha_farms")
    assert farms.exit_code == 2
    assert "metric alpha_farms needs FARMS alphas" in farms.stderr
