"""htsr compare: per-layer deltas on hand-built reports, and on a checkpoint with one layer replaced."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from safetensors.torch import save_file

from htsr_cli.results.compare import compare_reports
from htsr_cli.errors import HtsrError

from tests.conftest import FIXTURES
from tests.gate.test_rules import layer, report


def test_deltas_sorted_by_size_then_layers_without_one():
    a = report(layer("x", 2.0), layer("y", 3.0), layer("z", 4.0), layer("dead", 3.0), layer("old", 2.5), name="a.pth")
    b = report(layer("new", 5.0), layer("x", 2.5), layer("y", 2.0), layer("z", 4.0), layer("dead", None, "fit-failed", "no fit"), name="b.pth")
    comparison = compare_reports(a, b)
    assert [(d.name, d.before, d.after, d.delta, d.status) for d in comparison.layers] == [
        ("y", 3.0, 2.0, -1.0, "compared"),
        ("x", 2.0, 2.5, 0.5, "compared"),
        ("z", 4.0, 4.0, 0.0, "compared"),
        ("dead", 3.0, None, None, "no value in B"),
        ("old", 2.5, None, None, "only in A"),
        ("new", None, 5.0, None, "only in B"),
    ]
    assert comparison.summary() == {
        "layers_compared": 3,
        "mean_before": 3.0,
        "mean_after": 2.8333333333333335,  # (2.5 + 2 + 4) / 3
        "mean_delta": -1 / 6,  # (0.5 - 1 + 0) / 3
        "mean_abs_delta": 0.5,
        "largest_change": {"name": "y", "name_b": None, "before": 3.0, "after": 2.0, "delta": -1.0,
                           "status": "compared", "relative_error": None, "lambda_max_change": None},
        "without_value": 1,
        "only_in_a": 1,
        "only_in_b": 1,
        "mean_relative_error": None,  # only with --weights
        "max_relative_error": None,
    }
    data = comparison.to_json()
    assert (data["schema"], data["a"], data["b"], data["metric"], data["weights"], data["settings_differences"]) == (
        "htsr.compare/1", "a.pth", "b.pth", "alpha", False, []
    )


def test_settings_differences_and_farms():
    a = report(layer("x", 2.0, farms=2.2), farms=True)
    b = report(layer("x", 2.0, farms=2.7), farms=True, xmin="median")
    comparison = compare_reports(a, b, "alpha_farms")
    assert comparison.settings_differences == ("xmin: 'ks' vs 'median'",)
    assert comparison.layers[0].delta == pytest.approx(0.5)
    with pytest.raises(HtsrError, match="B model.pth: metric alpha_farms needs FARMS alphas"):
        compare_reports(a, report(layer("x", 2.0)), "alpha_farms")


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
