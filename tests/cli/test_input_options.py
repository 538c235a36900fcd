"""The model-input options `htsr landscape`, `htsr diagnose MODEL_A MODEL_B` and `htsr ensemble` share:
declared once, built into one InputOptions."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.main import get_command

from htsr_cli.cli._landscape_options import InputOptions
from htsr_cli.cli.app import app
from tests.conftest import assert_user_error

FLAGS = [
    "--data", "--text", "--label-column", "--batch-size", "--max-batches", "--seq-len", "--seed",
    "--trust-pickle", "--device",
]
COMMANDS = ("landscape", "diagnose", "ensemble")


def input_params(name: str) -> dict[str, tuple]:
    """flag -> (its names, help, type as --help shows it, default) of one command's input options."""
    command = get_command(app).commands[name]
    context = typer.Context(command)
    return {
        param.opts[0]: (tuple(param.opts), param.help, param.display_type(context), getattr(param.default, "value", param.default))
        for param in command.params
        if param.opts[0] in FLAGS
    }


def test_the_three_commands_have_the_same_input_flags_with_the_same_help_and_defaults():
    reference = input_params("landscape")
    assert list(reference) == FLAGS  # in this order, together, as --help lists them
    for name in COMMANDS[1:]:
        assert input_params(name) == reference, name


def test_the_defaults_shown_are_the_input_options_defaults():
    defaults = InputOptions()
    shown = {flag: described[3] for flag, described in input_params("landscape").items()}
    assert shown == {
        "--data": defaults.data, "--text": defaults.text, "--label-column": defaults.label_column,
        "--batch-size": defaults.batch_size, "--max-batches": defaults.max_batches, "--seq-len": defaults.seq_len,
        "--seed": defaults.seed, "--trust-pickle": defaults.trust_pickle, "--device": defaults.device,
    }


@pytest.mark.parametrize("name", COMMANDS)
def test_the_options_reach_the_command_as_one_input_options(cli, monkeypatch, tmp_path, name):
    seen = []

    def load(self, models, written):
        seen.append((self, list(models)))
        raise SystemExit(0)  # stop before any model is read

    monkeypatch.setattr(InputOptions, "load", load)
    data = tmp_path / "d.npz"
    data.write_bytes(b"")
    models = ["a.pth", "b.pth"]
    cli(name, *models, "--data", data, "--label-column", "y", "--batch-size", "7", "--max-batches", "2",
        "--seq-len", "16", "--seed", "5", "--trust-pickle", "--device", "cpu")
    assert seen == [(InputOptions(data=Path(data), label_column="y", batch_size=7, max_batches=2, seq_len=16, seed=5,
                                  trust_pickle=True, device="cpu"), models)]


def test_a_bad_device_is_one_line_and_exit_2(cli):
    assert_user_error(cli("landscape", "a.pth", "--device", "tpu"), "--device")
