"""`htsr allocate sparsity|experts` on the shipped fixtures."""

import csv
import importlib.util
import io
import json

import pytest
import torch

from htsr_cli.engine import pipeline as analysis
from tests.conftest import FIXTURES, REPO

TINY_LLAMA = FIXTURES / "tiny-llama"
TINY_CNN = FIXTURES / "tiny-cnn-trained.pth"

_reports: dict = {}


@pytest.fixture(autouse=True)
def analyse_each_fixture_once(monkeypatch):
    """Every command here re-analyses its checkpoint; the numbers cannot differ, so reuse them."""
    analyze = analysis.analyze

    def cached(source, settings, progress=None):
        key = (str(source), settings)
        if key not in _reports:
            _reports[key] = analyze(source, settings, progress=progress)
        return _reports[key]

    monkeypatch.setattr(analysis, "analyze", cached)


def assert_usage_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("htsr: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_sparsity_on_sharded_llama(cli, tmp_path):
    out = tmp_path / "sparsity.json"
    result = cli("allocate", "sparsity", TINY_LLAMA, "--target", "0.7", "--format", "json", "-o", out)
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    assert plan["schema"] == "htsr.sparsity/1"
    assert plan["settings"]["analysis"]["xmin"] == "peak"
    allocated = [entry for entry in plan["layers"] if entry["sparsity"] is not None]
    assert len(allocated) == 28  # 4 decoder layers x q, k, v, o, gate, up, down
    assert {entry["name"] for entry in plan["layers"] if entry["sparsity"] is None} == {"model.embed_tokens", "lm_head"}
    params = sum(entry["params"] for entry in allocated)
    assert sum(e["params"] * e["sparsity"] for e in allocated) / params == pytest.approx(0.7, abs=1e-12)
    by_block = {}
    for entry in allocated:  # block granularity: one sparsity per decoder layer
        by_block.setdefault(entry["block"], set()).add(entry["sparsity"])
    assert list(by_block) == [f"model.layers.{i}" for i in range(4)]
    assert all(len(values) == 1 for values in by_block.values())

    table = cli("allocate", "sparsity", TINY_LLAMA, "--target", "0.7")
    assert table.exit_code == 0
    assert "model.layers.3.mlp.down_proj" in table.stdout
    assert "weighted mean sparsity 0.7000 (target 0.7) over 28 matrices" in table.stdout

    rows = list(csv.DictReader(io.StringIO(cli("allocate", "sparsity", TINY_LLAMA, "--target", "0.7", "--format", "csv").stdout)))
    assert [row["name"] for row in rows] == [entry["name"] for entry in plan["layers"]]
    assert [float(row["sparsity"]) if row["sparsity"] else None for row in rows] == [e["sparsity"] for e in plan["layers"]]


def test_sparsity_matrix_granularity_without_clip(cli):
    result = cli("allocate", "sparsity", TINY_LLAMA, "--target", "0.9", "--epsilon", "0.6",
                 "--granularity", "matrix", "--no-clip", "--format", "json")
    plan = json.loads(result.stdout)
    sparsities = [entry["sparsity"] for entry in plan["layers"] if entry["sparsity"] is not None]
    assert max(sparsities) > 0.99 and plan["summary"]["clipped"] == 0
    clipped = json.loads(cli("allocate", "sparsity", TINY_LLAMA, "--target", "0.9", "--epsilon", "0.6",
                             "--granularity", "matrix", "--format", "json").stdout)
    assert clipped["summary"]["clipped"] >= 1
    assert clipped["summary"]["max_sparsity"] == 0.99
    assert clipped["summary"]["weighted_mean"] == pytest.approx(0.9, abs=1e-12)


def test_experts_on_sharded_llama(cli):
    result = cli("allocate", "experts", TINY_LLAMA, "--format", "json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["schema"] == "htsr.experts/1"
    assert [entry["name"] for entry in plan["layers"]] == [f"model.layers.{i}" for i in range(4)]
    counts = [entry["experts"] for entry in plan["layers"]]
    assert sum(counts) == 20 and min(counts) >= 1
    scores = [entry["score"] for entry in plan["layers"]]
    assert sorted(range(4), key=lambda i: scores[i]) == sorted(range(4), key=lambda i: counts[i])
    assert all(entry["top_k"] == (2 if entry["experts"] > 1 else 1) for entry in plan["layers"])
    table = cli("allocate", "experts", TINY_LLAMA, "--total", "8")
    assert "8 experts over 4 blocks (beta 2.5)" in table.stdout


def test_prune_example_applies_the_plan(cli, tmp_path):
    plan_path = tmp_path / "sparsity.json"
    result = cli("allocate", "sparsity", TINY_CNN, "--target", "0.5", "--granularity", "matrix",
                 "--format", "json", "-o", plan_path)
    assert result.exit_code == 0, result.output
    spec = importlib.util.spec_from_file_location("prune_with_sparsity", REPO / "examples" / "prune_with_sparsity.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    pruned_path = tmp_path / "pruned.pth"
    example.main([str(plan_path), str(TINY_CNN), str(pruned_path)])
    pruned = torch.load(pruned_path, weights_only=True)
    plan = json.loads(plan_path.read_text())
    for entry in plan["layers"]:
        zeros = float((pruned[entry["tensor"]] == 0).float().mean())
        if entry["sparsity"] is None:
            assert zeros == 0.0  # conv1 and fc3 (first and last) are untouched
        else:
            assert zeros == pytest.approx(entry["sparsity"], abs=1 / pruned[entry["tensor"]].numel())


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["allocate", "sparsity", TINY_CNN, "--target", "1.5"], ["--target", "1.5"]),
        (["allocate", "sparsity", TINY_CNN, "--target", "0"], ["--target", "0.0"]),
        (["allocate", "sparsity", TINY_CNN, "--target", "0.5", "--epsilon", "1"], ["--epsilon", "1.0"]),
        (["allocate", "sparsity", TINY_CNN, "--target", "0.5"], ["tiny-cnn-trained.pth", "--granularity block", "use matrix"]),
        (["allocate", "experts", TINY_LLAMA, "--total", "3"], ["--total 3", "number of blocks (4)"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, args, fragments):
    assert_usage_error(cli(*args), *fragments)
