"""The everyday surface across commands: one vocabulary, `wrote PATH`, errors that name flags, help texts."""

from __future__ import annotations

import json
import re

import pytest

import htsr_cli
from tests.conftest import FIXTURES
from htsr_cli.cli.app import app
from htsr_cli.errors import HtsrError, InvalidSetting

TINY_CNN = FIXTURES / "tiny-cnn-trained.pth"
TINY_LLAMA = FIXTURES / "tiny-llama"


def assert_usage_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("htsr: error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """tiny-llama analysed twice and saved: with the peak rule (AlphaPruning's) and with ks + FARMS."""
    from typer.testing import CliRunner

    folder = tmp_path_factory.mktemp("saved")
    runner = CliRunner()
    for name, args in (("peak", ["--xmin", "peak"]), ("farms", ["--farms", "--farms-window", "16", "--farms-steps", "3"])):
        result = runner.invoke(app, ["analyze", str(TINY_LLAMA), "-q", "-f", "json", "-o", str(folder / f"{name}.json"), *args])
        assert result.exit_code == 0, result.output
    return folder


# ---------------------------------------------------------------- wrote PATH


@pytest.mark.parametrize("command", [
    ["analyze", TINY_CNN, "-f", "json"],
    ["allocate", "sparsity", TINY_CNN, "--target", "0.5", "--granularity", "matrix"],
    ["allocate", "experts", TINY_LLAMA, "-f", "csv"],
    ["lr-schedule", "export", TINY_CNN, "--base-lr", "0.1"],
    ["compare", TINY_CNN, TINY_CNN, "-f", "markdown"],
    ["gate", TINY_CNN, "--format", "json"],
])
def test_every_output_file_is_announced_on_stderr_unless_quiet(cli, tmp_path, command):
    target = tmp_path / "out.txt"
    result = cli(*command, "-o", target)
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and target.stat().st_size > 0
    assert result.stderr.splitlines()[-1] == f"wrote {target}"
    target.unlink()
    quiet = cli(*command, "-o", target, "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "" and target.is_file()


# ---------------------------------------------------------------- one vocabulary


def test_allocations_read_a_saved_report_like_the_checkpoint(cli, saved):
    from_checkpoint = json.loads(cli("allocate", "sparsity", TINY_LLAMA, "--target", "0.7", "-f", "json").stdout)
    result = cli("allocate", "sparsity", saved / "peak.json", "--target", "0.7", "-f", "json")
    assert result.exit_code == 0, result.output
    from_report = json.loads(result.stdout)
    assert [e["sparsity"] for e in from_report["layers"]] == [e["sparsity"] for e in from_checkpoint["layers"]]
    assert result.stderr == ""  # analyzed with AlphaPruning's own rule: nothing to say
    experts = cli("allocate", "experts", saved / "farms.json", "-f", "json")
    assert experts.exit_code == 0
    assert experts.stderr.startswith(f"note: {saved / 'farms.json'} was analyzed with xmin=ks; AlphaLoRA uses xmin=peak")


def test_metric_chooses_alpha_farms_and_farms_only_computes_it(cli, saved):
    farms = json.loads(cli("allocate", "sparsity", saved / "farms.json", "--target", "0.5", "--metric", "alpha_farms",
                           "-f", "json", "-q").stdout)
    plain = json.loads(cli("allocate", "sparsity", saved / "farms.json", "--target", "0.5", "-f", "json", "-q").stdout)
    assert farms["settings"]["metric"] == "alpha_farms" and plain["settings"]["metric"] == "alpha"
    assert "alpha_farms" in farms["layers"][1] and "alpha" in plain["layers"][1]
    assert [e["sparsity"] for e in farms["layers"]] != [e["sparsity"] for e in plain["layers"]]
    # --farms alone computes FARMS but the allocation still reads plain alpha, as in analyze
    with_farms = json.loads(cli("allocate", "sparsity", TINY_LLAMA, "--target", "0.5", "--farms", "--farms-window", "16",
                                "--farms-steps", "3", "-f", "json", "-q").stdout)
    assert with_farms["settings"]["metric"] == "alpha" and with_farms["settings"]["analysis"]["farms"]
    assert_usage_error(cli("allocate", "experts", TINY_LLAMA, "--metric", "alpha_farms"), "add --farms")
    assert_usage_error(cli("lr-schedule", "export", TINY_CNN, "--base-lr", "0.1", "--metric", "alpha_farms"), "add --farms")
    assert_usage_error(cli("allocate", "sparsity", saved / "peak.json", "--target", "0.5", "--metric", "alpha_farms"),
                       "alpha_farms")
    assert_usage_error(cli("allocate", "sparsity", saved / "peak.json", "--target", "0.5", "--xmin", "ks"),
                       "saved report", "apply only to a checkpoint")


# ---------------------------------------------------------------- errors name flags or parameters


@pytest.mark.parametrize(("args", "flag_message", "parameter_message", "make"), [
    (["analyze", TINY_CNN, "--min-evals", "1"], "--min-evals 1: must be at least 2", "min_evals=1: must be at least 2",
     lambda: htsr_cli.analyze(TINY_CNN, min_evals=1)),
    (["analyze", TINY_CNN, "--farms", "--farms-window", "0"], "--farms-window 0: must be at least 1",
     "window=0: must be at least 1", lambda: htsr_cli.FarmsSettings(window=0)),
    (["analyze", TINY_CNN, "--layers", "nomatch"], "--layers nomatch: matches none of the 6 weight matrices",
     "layers='nomatch': matches none of the 6", lambda: htsr_cli.analyze(TINY_CNN, layers="nomatch")),
    (["lr-schedule", "export", TINY_CNN, "--base-lr", "0"], "--base-lr 0.0: must be a positive finite number",
     "base_lr=0.0: must be a positive finite number", lambda: htsr_cli.LrSettings(base_lr=0.0)),
    (["allocate", "sparsity", TINY_CNN, "--target", "2"], "--target 2.0: must be a sparsity",
     "target=2.0: must be a sparsity", lambda: htsr_cli.SparsitySettings(target=2.0)),
])
def test_the_cli_names_flags_and_the_library_names_parameters(cli, args, flag_message, parameter_message, make):
    assert_usage_error(cli(*args), flag_message)
    with pytest.raises(InvalidSetting) as raised:
        make()
    assert str(raised.value).startswith(parameter_message)
    assert "--" not in str(raised.value)
    assert isinstance(raised.value, HtsrError) and isinstance(raised.value, ValueError)


# ---------------------------------------------------------------- help


def all_commands():
    from typer.main import get_command

    root = get_command(app)
    yield [], root
    for name, command in root.commands.items():
        if hasattr(command, "commands"):
            yield [name], command
            for sub in command.commands:
                yield [name, sub], command.commands[sub]
        else:
            yield [name], command


@pytest.mark.parametrize("path", [path for path, _ in all_commands()], ids=lambda p: " ".join(p) or "htsr")
def test_help_has_examples_no_bool_types_and_every_default(cli, path):
    result = cli(*path, "--help")
    assert result.exit_code == 0
    text = result.stdout
    assert "<bool>" not in text
    command = dict((tuple(p), c) for p, c in all_commands())[tuple(path)]
    if not hasattr(command, "commands") or not path:
        assert "Examples:" in text
        assert re.search(r"\n\s+htsr \S", text.split("Examples:")[1])
    for param in command.params:
        if param.param_type_name == "argument":
            assert param.metavar in ("CHECKPOINT", "CHECKPOINT|REPORT.json", "A", "B", "MODEL", "RUN_DIR|CHECKPOINT...", "GGUF")
            assert param.metavar in text
        elif not param.is_flag and not param.required and param.name not in ("help",):
            assert param.show_default, f"{' '.join(path)} {param.opts[0]} hides its default"


def test_checkpoint_help_names_every_format_and_bare_hub_ids():
    from typer.testing import CliRunner

    text = " ".join(CliRunner().invoke(app, ["analyze", "--help"], env={"COLUMNS": "200"}).stdout.split())
    assert ".safetensors/.pt/.pth/.bin/.ckpt/.gguf/.onnx file" in text and "a bare gpt2 when cached" in text


def test_shell_completion_is_offered(cli):
    text = cli("--help").stdout
    assert "--install-completion" in text and "--show-completion" in text
