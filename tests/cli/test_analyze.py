"""`htsr analyze` on the command line: formats, files, and every bad input (exit 2, one line)."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import FIXTURES, assert_user_error

LAYER_KEYS = {
    "name", "tensor", "kind", "shape", "block", "params", "storage", "status", "reason", "num_evals", "alpha",
    "xmin", "ks_distance", "sigma", "tail_size", "lambda_max", "log_spectral_norm", "log_norm",
    "stable_rank", "alpha_weighted", "log_alpha_norm", "entropy", "quality", "eigensolver_redone",
}
SUMMARY_KEYS = {"layers", "analyzed", "skipped", "failed", "mean_alpha", "median_alpha", "weighted_alpha", "quality_counts", "seconds"}
SETTINGS_KEYS = {
    "xmin", "farms", "device", "precision", "gram_precision", "eigensolver_precision", "conv_scale", "min_evals",
    "max_memory",
}


@pytest.fixture
def checkpoint(tmp_path, state_dict) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(state_dict, path)
    return path


def test_json_follows_the_report_schema(cli, checkpoint):
    result = cli("analyze", checkpoint, "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema"] == "htsr.report/1"
    assert report["checkpoint"] == str(checkpoint)
    assert SETTINGS_KEYS <= set(report["settings"])
    assert SUMMARY_KEYS <= set(report["summary"])
    assert len(report["layers"]) == 8
    for layer in report["layers"]:
        assert set(layer) == LAYER_KEYS
    assert report["settings"]["xmin"] == "ks" and report["settings"]["device"] == "cpu"
    assert {layer["storage"] for layer in report["layers"]} == {"float32"}


def test_csv_markdown_and_table_carry_the_same_alphas(cli, checkpoint):
    data = json.loads(cli("analyze", checkpoint, "--format", "json").stdout)
    alphas = {layer["name"]: layer["alpha"] for layer in data["layers"]}
    rows = list(csv.DictReader(io.StringIO(cli("analyze", checkpoint, "--format", "csv").stdout)))
    assert {row["name"]: float(row["alpha"]) for row in rows} == alphas
    markdown = cli("analyze", checkpoint, "--format", "markdown").stdout
    table = cli("analyze", checkpoint).stdout
    for name, alpha in alphas.items():
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {alpha:.3f} |" in line
        assert re.search(rf"{re.escape(name)}\s.*\s{alpha:.3f}\s", table)


def test_output_file_is_written(cli, checkpoint, tmp_path):
    target = tmp_path / "report.json"
    result = cli("analyze", checkpoint, "--format", "json", "-o", target)
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(target.read_text())["schema"] == "htsr.report/1"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_shipped_demo_checkpoint(cli):
    result = cli("analyze", FIXTURES / "tiny-cnn-trained.pth")
    assert result.exit_code == 0, result.output
    assert "conv1" in result.stdout and "fc3" in result.stdout and "layers analyzed" in result.stdout


def test_version(cli):
    from htsr_cli import __version__

    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"htsr {__version__}"


def test_missing_path(cli, tmp_path):
    missing = tmp_path / "nope.pth"
    assert_user_error(cli("analyze", missing), str(missing), "no such file")


def test_truncated_safetensors(cli, checkpoint, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    assert_user_error(cli("analyze", broken), str(broken))


def test_truncated_torch_file(cli, tmp_path, state_dict):
    whole = tmp_path / "whole.pth"
    torch.save(state_dict, whole)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert_user_error(cli("analyze", broken), str(broken))


def test_directory_without_weights(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert_user_error(cli("analyze", tmp_path / "empty"), str(tmp_path / "empty"), "no weights")


def test_unknown_format(cli, tmp_path):
    model = tmp_path / "model.h5"  # not .onnx: that is a format now (tests/checkpoints/test_onnx.py)
    model.write_bytes(b"\x08\x07")
    assert_user_error(cli("analyze", model), str(model), "unknown checkpoint format '.h5'", ".onnx")


def test_uncached_hub_id_offline(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert_user_error(cli("analyze", "someone/not-cached-model"), "someone/not-cached-model", "offline")


def test_regex_matching_nothing(cli, checkpoint):
    assert_user_error(cli("analyze", checkpoint, "--layers", "^nothing$"), "^nothing$")


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"fc.weight": _RunsCode(marker)}, handle)
    assert_user_error(cli("analyze", evil), str(evil))
    assert not marker.exists()


def test_nan_layer_is_reported_not_fatal(cli, tmp_path, state_dict):
    state_dict["blocks.0.fc1.weight"][0, 0] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_file(state_dict, path)
    result = cli("analyze", path, "--format", "json")
    assert result.exit_code == 0
    layers = {layer["name"]: layer for layer in json.loads(result.stdout)["layers"]}
    assert layers["blocks.0.fc1"]["status"] == "failed" and layers["blocks.0.fc1"]["alpha"] is None
    assert layers["blocks.0.fc2"]["status"] == "ok"


@pytest.mark.parametrize(
    "option,value",
    [("--min-evals", "1"), ("--conv-scale", "0"), ("--xmin", "best"), ("--device", "tpu"), ("--format", "xml")],
)
def test_out_of_range_options(cli, checkpoint, option, value):
    assert_user_error(cli("analyze", checkpoint, option, value), value)


def test_failed_run_leaves_no_output_file(cli, tmp_path):
    target = tmp_path / "report.json"
    result = cli("analyze", tmp_path / "missing.safetensors", "--format", "json", "-o", target)
    assert result.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_output_into_missing_directory(cli, checkpoint, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "r.json"
    assert_user_error(cli("analyze", checkpoint, "-o", target), str(target))


def test_output_file_permissions_follow_the_umask(cli, checkpoint, tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "r.json"
        assert cli("analyze", checkpoint, "-f", "json", "-o", target).exit_code == 0
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


def test_output_to_a_device_writes_into_it_and_never_replaces_it(cli, checkpoint):
    """`-o /dev/null` must not rename a temp file over the device node (fatal when run as root)."""
    import stat

    assert cli("analyze", checkpoint, "-f", "json", "-o", "/dev/null").exit_code == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_output_to_a_fifo_streams_into_it(tmp_path):
    import threading

    from htsr_cli.io import write_atomic

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo).read()))
    reader.start()
    write_atomic(fifo, "hello\n")
    reader.join(timeout=120)  # returns as soon as the reader has the text; the bound only stops a hang
    assert received == ["hello\n"] and fifo.is_fifo()
