"""`htsr lr-schedule export`: its formats agree, a schedule from a saved report, the table on a terminal, bad input."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import pytest
import yaml
from rich.console import Console

from htsr_cli.cli import _output
from tests.cli.test_allocate import assert_usage_error
from tests.conftest import FIXTURES

RESNET = FIXTURES / "resnet18_w16.pth"
TINY_CNN = FIXTURES / "tiny-cnn-trained.pth"


def test_lr_schedule_formats_agree_on_resnet(cli, tmp_path):
    paths = {fmt: tmp_path / f"schedule.{fmt}" for fmt in ("json", "yaml", "csv")}
    for fmt, path in paths.items():
        result = cli("lr-schedule", "export", RESNET, "--base-lr", "0.1", "--epochs", "5", "--format", fmt, "-o", path)
        assert result.exit_code == 0, result.output
    plan = json.loads(paths["json"].read_text())
    assert yaml.safe_load(paths["yaml"].read_text()) == plan
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [row["name"] for row in rows] == [entry["name"] for entry in plan["layers"]]
    for row, entry in zip(rows, plan["layers"]):
        # JSON keeps full precision; CSV rounds to 12 significant digits (no 0.07500000000000001)
        assert float(row["lr"]) == pytest.approx(entry["lr"], rel=1e-11)
        assert [float(row[f"lr_epoch_{t}"]) for t in range(5)] == pytest.approx(entry["lrs"], rel=1e-11)
        assert all(len(cell.replace("-", "").replace(".", "").lstrip("0")) <= 12
                   for cell in [row["lr"], row["factor"]] if "e" not in cell)

    entries = {entry["name"]: entry for entry in plan["layers"]}
    assert entries["conv1"]["factor"] == 1.0 and entries["fc"]["factor"] == 1.0
    assert entries["layer2.0.downsample.0"]["factor"] == 1.0  # 16 eigenvalues < 50
    assert entries["layer3.1.bn2"]["factor"] == entries["layer3.1.conv2"]["factor"]
    assert entries["layer3.1.bn2"]["note"] == "follows layer3.1.conv2"
    middle = [e for e in plan["layers"] if e["kind"] == "conv2d" and e["note"] is None]
    assert min(e["factor"] for e in middle) == 0.5 and max(e["factor"] for e in middle) == 1.5
    for entry in middle:
        assert entry["lrs"] == pytest.approx([entry["lr"] * 0.5 * (1 + math.cos(math.pi * t / 5)) for t in range(5)])


def test_lr_schedule_from_a_report_lists_the_weight_matrices(cli, tmp_path):
    report = tmp_path / "cnn.json"
    assert cli("analyze", TINY_CNN, "--xmin", "median", "-f", "json", "-o", report, "-q").exit_code == 0
    from_checkpoint = json.loads(cli("lr-schedule", "export", TINY_CNN, "--base-lr", "0.05", "-f", "json").stdout)
    result = cli("lr-schedule", "export", report, "--base-lr", "0.05", "-f", "json")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"note: {report} is a report: the schedule lists weight matrices only (no BatchNorm modules)\n"
    from_report = json.loads(result.stdout)
    matrices = [e for e in from_checkpoint["layers"] if e["kind"] != "norm"]
    assert from_report["layers"] == matrices
    assert {e["name"] for e in from_checkpoint["layers"]} - {e["name"] for e in from_report["layers"]} == {"bn1", "bn2", "bn3"}


def test_lr_schedule_csv_rounds_and_json_keeps_full_precision(cli):
    text = cli("lr-schedule", "export", TINY_CNN, "--base-lr", "0.05", "-f", "csv").stdout
    plan = json.loads(cli("lr-schedule", "export", TINY_CNN, "--base-lr", "0.05", "-f", "json").stdout)
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(text))}
    for entry in plan["layers"]:
        assert rows[entry["name"]]["lr"] == repr(float(f"{entry['lr']:.12g}"))
    assert not re.search(r"\d{15,}", text)  # no float noise like 0.07500000000000001


def test_lr_schedule_prints_a_table_on_a_terminal_and_json_when_piped(cli, monkeypatch):
    piped = cli("lr-schedule", "export", TINY_CNN, "--base-lr", "0.05")
    assert json.loads(piped.stdout)["schema"] == "htsr.lr_schedule/1"
    terminal = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    monkeypatch.setattr(_output, "stdout_console", terminal)
    assert cli("lr-schedule", "export", TINY_CNN, "--base-lr", "0.05").exit_code == 0
    table = terminal.file.getvalue()
    assert "┃ name " in table and "┃ factor " in table and "first layer keeps the base LR" in table
    assert "base LR 0.05 | " in table


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["lr-schedule", "export", TINY_CNN, "--base-lr", "0"], ["--base-lr", "0.0"]),
        (["lr-schedule", "export", TINY_CNN, "--base-lr", "-0.1"], ["--base-lr", "-0.1"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, args, fragments):
    assert_usage_error(cli(*args), *fragments)
