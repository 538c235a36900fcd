"""Every command that prints a table, on terminals 80, 100 and 120 columns wide: no line is
longer than the terminal, names keep their block index and leaf, notes wrap to the
terminal (not to the table), a column holding one value becomes a note, and a pipe
shows every column with its notes unwrapped."""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest
import torch
from rich.cells import cell_len
from rich.console import Console

from fixtures.language_models import write_tiny_language_model
from tests.conftest import FIXTURES, tiny_text
from tests.landscape.digits import write_digits
from htsr_cli.cli import _output

WIDTHS = (80, 100, 120)
TINY_LLAMA = FIXTURES / "tiny-llama"
BLOCKS = re.compile(r"^(model\.layers|encoder\.layer)\.")
QUICK = ["--max-batches", "1", "--batch-size", "64", "--ascent-steps", "2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, minilm_dir):
    """Saved reports (so each width does not analyze again) and the files the other commands read."""
    from typer.testing import CliRunner

    from htsr_cli.cli.app import app

    root = tmp_path_factory.mktemp("widths")
    runner = CliRunner()
    paths = {"minilm": minilm_dir, "llama": TINY_LLAMA}
    for name, source, xmin in (("llama-peak", TINY_LLAMA, "peak"), ("minilm-peak", minilm_dir, "peak"),
                               ("minilm-ks", minilm_dir, "ks")):
        paths[name] = root / f"{name}.json"
        result = runner.invoke(app, ["analyze", str(source), "--xmin", xmin, "-f", "json", "-o", str(paths[name]), "-q"])
        assert result.exit_code == 0, result.output
    paths["plan"] = root / "bits.json"
    result = runner.invoke(app, ["allocate", "bits", str(paths["llama-peak"]), "--average", "4", "-f", "json",
                                 "-o", str(paths["plan"]), "-q"])
    assert result.exit_code == 0, result.output
    run = root / "run"
    for step in (1, 2):
        shutil.copytree(TINY_LLAMA, run / f"checkpoint-{step}")
    paths["run"] = run
    paths["lm"] = write_tiny_language_model(root / "lm", "llama")
    paths["text"] = root / "text.txt"
    paths["text"].write_text(tiny_text(400))
    torch.set_num_threads(1)
    (root / "digits").mkdir()
    paths.update(write_digits(root / "digits"))
    paths["out"], paths["quantized"], paths["smoothed"] = root / "out", root / "quantized", root / "smoothed"
    return paths


def leaves(report_path) -> set[str]:
    return {layer["name"].split(".")[-1] for layer in json.loads(report_path.read_text())["layers"]}


COMMANDS = {
    "analyze": lambda p: ["analyze", p["llama"]],
    "analyze-minilm": lambda p: ["analyze", p["minilm"]],
    "allocate-sparsity": lambda p: ["allocate", "sparsity", p["llama-peak"], "--target", "0.7"],
    "allocate-sparsity-minilm": lambda p: ["allocate", "sparsity", p["minilm-peak"], "--target", "0.7"],
    "allocate-experts": lambda p: ["allocate", "experts", p["minilm-peak"]],
    "allocate-bits": lambda p: ["allocate", "bits", p["llama-peak"], "--average", "4"],
    "lr-schedule": lambda p: ["lr-schedule", "export", p["minilm-ks"], "--base-lr", "0.1", "-f", "table"],
    "compare": lambda p: ["compare", p["minilm-ks"], p["minilm-peak"]],
    "compare-same": lambda p: ["compare", p["llama-peak"], p["llama-peak"]],
    "prune": lambda p: ["prune", p["llama"], "--target", "0.5", "-o", p["out"], "--overwrite", "-q"],
    "smooth": lambda p: ["smooth", p["llama"], "--percent", "0.5", "-o", p["smoothed"], "--overwrite", "-q"],
    "describe": lambda p: ["describe", p["minilm"]],
    "quantize": lambda p: ["quantize", p["llama"], "--plan", p["plan"], "--group-size", "0", "-o", p["quantized"], "--overwrite", "-q"],
    "track": lambda p: ["track", p["run"], "--no-cache", "-q"],
    "eval": lambda p: ["eval", "perplexity", p["lm"], "--text", p["text"], "--seq-len", "16", "-q"],
    "diagnose": lambda p: ["diagnose", "--train-error", "40.5", "--mode-connectivity-peak", "-34.9", "--hessian-t", "5.3"],
    "landscape": lambda p: ["landscape", p["seed0"], p["seed1"], "--trust-pickle", "--data", p["npz"], *QUICK,
                            "--max-iterations", "3", "--curve-steps", "3", "-q"],
    "ensemble": lambda p: ["ensemble", p["seed0"], p["seed1"], "--trust-pickle", "--data", p["npz"], *QUICK, "-q"],
}
LAYER_TABLES = {"analyze": "llama-peak", "analyze-minilm": "minilm-ks", "allocate-sparsity": "llama-peak",
                "allocate-sparsity-minilm": "minilm-peak", "allocate-bits": "llama-peak", "lr-schedule": "minilm-ks",
                "compare": "minilm-ks", "prune": "llama-peak"}


def on_terminal(cli, monkeypatch, width: int, args) -> list[str]:
    terminal = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    monkeypatch.setattr(_output, "stdout_console", terminal)
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return terminal.file.getvalue().splitlines()


def first_cells(lines: list[str]) -> list[str]:
    return [line.strip("│").split("│")[0].strip() for line in lines if line.startswith("│")]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_table_fits_the_terminal_and_keeps_block_and_leaf(cli, monkeypatch, inputs, command, width):
    lines = on_terminal(cli, monkeypatch, width, COMMANDS[command](inputs))
    too_long = [line for line in lines if cell_len(line) > width]
    assert not too_long, too_long[:3]
    if command in LAYER_TABLES:
        known = leaves(inputs[LAYER_TABLES[command]])
        for name in first_cells(lines):
            if not name:  # a wrapped note's continuation row
                continue
            if BLOCKS.match(name):  # the block index survives any cut
                assert re.match(r"^(model\.layers|encoder\.layer)\.\d+[.…]", name), name
            leaf = re.split(r"[.…]", name)[-1]
            assert leaf in known, name


def test_notes_wrap_to_the_terminal_and_the_title_is_not_folded(cli, monkeypatch, inputs):
    lines = on_terminal(cli, monkeypatch, 120, ["analyze", inputs["minilm"], "--columns", "layer,alpha"])
    table_width = max(cell_len(line) for line in lines if line.startswith("┏"))
    assert lines[0] == f"htsr: {inputs['minilm']}"  # one line, though wider than the two-column table
    assert any(line.startswith("xmin=ks") and cell_len(line) > table_width for line in lines)


def test_a_constant_column_becomes_a_note(cli, monkeypatch, inputs):
    lines = on_terminal(cli, monkeypatch, 100, COMMANDS["compare-same"](inputs))
    header = next(line for line in lines if line.startswith("┃"))
    assert "status" not in header
    assert "status: compared on every row" in lines


def test_piped_tables_keep_every_column_and_unwrapped_notes(cli, inputs):
    result = cli(*COMMANDS["allocate-sparsity"](inputs))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("┃"))
    assert all(name in header for name in ("module", "block", "params", "alpha", "block mean", "sparsity", "note"))
    assert "model.layers.0.self_attn.q_proj" in result.stdout
    assert [line for line in lines if line.startswith("weighted mean sparsity")][0].endswith("not pruned 2")
    assert not [line for line in lines if line.startswith("hidden at")]


def test_narrow_terminals_say_which_columns_they_hid(cli, monkeypatch, inputs):
    lines = on_terminal(cli, monkeypatch, 80, COMMANDS["allocate-sparsity"](inputs))
    hidden = [line for line in lines if line.startswith("hidden at 80 columns:")]
    assert hidden and "block" in hidden[0] and "piped output shows all" in " ".join(lines)


def test_gate_help_at_80_columns_keeps_a_usable_description_column(cli):
    from typer.testing import CliRunner

    from htsr_cli.cli.app import app

    result = CliRunner().invoke(app, ["gate", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(cell_len(line) for line in lines) <= 80
    rows = [line for line in lines if line.startswith("│ --config")]
    assert rows and "A TOML file with a tool.htsr.gate table" in rows[0]  # 40+ characters of description
    assert "--no-require-layers" in result.stdout
    options = [line for line in lines if re.match(r"│ +-", line)]
    # typer's own layout took 196 lines for 28 options (7 a line); two columns need about 4.
    assert len(lines) < 5 * len(options)
