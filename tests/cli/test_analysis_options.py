"""The analysis options every analysing command shares: declared once, built into one AnalyzeSettings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

import htsr_cli.engine.pipeline
from htsr_cli.cli._analysis_options import OPTION_NAMES, analysis_options
from htsr_cli.cli.app import app
from htsr_cli.errors import HtsrError
from htsr_cli.settings import AnalyzeSettings, FarmsSettings

REPO = Path(__file__).resolve().parents[2]
TINY_CNN = REPO / "fixtures" / "tiny-cnn-trained.pth"
FLAGS = [
    "--farms", "--xmin", "--layers", "--device", "--min-evals", "--conv-scale",
    "--farms-window", "--farms-q", "--farms-steps", "--precision", "--max-memory",
    "--fit", "--fix-fingers", "--small-n",
    "--mp-fit", "--randomize", "--seed", "--detx",
]

# Each analysing command, the arguments it needs besides the analysis options, and its default settings.
COMMANDS = {
    "analyze": (["analyze", TINY_CNN], AnalyzeSettings()),
    "report": (["report", TINY_CNN, "-o", "REPORT.html"], AnalyzeSettings()),
    "gate": (["gate", TINY_CNN], AnalyzeSettings()),
    "compare": (["compare", TINY_CNN, TINY_CNN], AnalyzeSettings()),
    "allocate sparsity": (["allocate", "sparsity", TINY_CNN, "--target", "0.5"], AnalyzeSettings(xmin="peak")),
    "allocate experts": (["allocate", "experts", TINY_CNN], AnalyzeSettings(xmin="peak")),
    "allocate bits": (["allocate", "bits", TINY_CNN, "--average", "4"], AnalyzeSettings(xmin="peak")),
    "lr-schedule export": (["lr-schedule", "export", TINY_CNN, "--base-lr", "0.1"], AnalyzeSettings(xmin="median")),
}


def command_at(path: str):
    command = get_command(app)
    for name in path.split():
        command = command.commands[name]
    return command


def analysis_params(path: str) -> dict[str, tuple]:
    """flag -> (its names, help, type as --help shows it, default shown, default value) of one command."""
    command = command_at(path)
    context = typer.Context(command)
    described = {}
    for param in command.params:
        if param.name in OPTION_NAMES:
            default = getattr(param.default, "value", param.default)
            described[param.opts[0]] = (
                tuple(param.opts), param.help, param.display_type(context), param.show_default, default
            )
    return described


def test_every_analysing_command_has_the_same_eighteen_flags_with_the_same_help():
    reference = analysis_params("analyze")
    assert list(reference) == FLAGS
    for path, (_, defaults) in COMMANDS.items():
        described = analysis_params(path)
        assert list(described) == FLAGS, path
        for flag in FLAGS:
            names, help_text, shown_type, show_default, default = described[flag]
            assert (names, help_text, shown_type, show_default) == reference[flag][:4], (path, flag)
        assert described["--xmin"][4] == defaults.xmin, path
        assert {flag: value[4] for flag, value in described.items() if flag != "--xmin"} == {
            flag: value[4] for flag, value in reference.items() if flag != "--xmin"
        }, path


def test_no_command_module_imports_another():
    commands = [path for path in (REPO / "htsr_cli" / "cli").glob("*.py") if not path.name.startswith("_")]
    command_names = {path.stem for path in commands} - {"app"}
    for path in commands:
        if path.stem == "app":
            continue  # the registry imports every command
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("htsr_cli.cli"):
                # from htsr_cli.cli.analyze import ..., or from htsr_cli.cli import analyze
                imported = {node.module.removeprefix("htsr_cli.cli").lstrip(".")} | {alias.name for alias in node.names}
                assert not imported & command_names, f"{path.name} imports {imported & command_names}"


@pytest.fixture
def analysed_settings(monkeypatch, tmp_path):
    """Run a command up to its analysis and return the settings it would analyse with."""
    seen: list[AnalyzeSettings] = []

    def record(source, settings, **_):
        seen.append(settings)
        raise HtsrError("recorded")

    monkeypatch.setattr(htsr_cli.engine.pipeline, "analyze", record)
    monkeypatch.chdir(tmp_path)

    def run(path: str, *options: str) -> AnalyzeSettings:
        arguments, _ = COMMANDS[path]
        result = CliRunner().invoke(app, [str(argument) for argument in [*arguments, *options]])
        assert result.stderr == "htsr: error: recorded\n", result.output
        [settings] = seen
        seen.clear()
        return settings

    return run


@pytest.mark.parametrize("path", list(COMMANDS))
def test_the_options_reach_the_analysis_as_one_settings_object(path, analysed_settings):
    assert analysed_settings(path) == COMMANDS[path][1]
    assert analysed_settings(
        path, "--farms", "--xmin", "median", "--layers", "fc", "--device", "cpu", "--min-evals", "4",
        "--conv-scale", "0.5", "--farms-window", "100", "--farms-q", "2", "--farms-steps", "5",
        "--precision", "float64", "--max-memory", "64MiB", "--mp-fit", "--randomize", "--seed", "7", "--detx",
    ) == AnalyzeSettings(
        xmin="median", farms=FarmsSettings(window=100, q=2.0, steps=5), device="cpu", precision="float64",
        conv_scale=0.5, min_evals=4, layers="fc", max_memory=64 * 2**20, mp_fit=True, randomize=True, seed=7,
        detx=True,
    )


@pytest.mark.parametrize(("options", "expected"), [
    ((), AnalyzeSettings()),
    (("--farms",), AnalyzeSettings(farms=FarmsSettings())),
    (("--xmin", "peak", "--precision", "float32"), AnalyzeSettings(xmin="peak", precision="float32")),
    (("--layers", "conv", "--max-memory", "1GB"), AnalyzeSettings(layers="conv", max_memory=10**9)),
])
def test_the_group_builds_the_settings_the_flags_describe(options, expected):
    received = []
    probe = typer.Typer()

    @probe.command()
    @analysis_options
    def analyse(settings: AnalyzeSettings = AnalyzeSettings()) -> None:
        received.append(settings)

    result = CliRunner().invoke(probe, list(options))
    assert result.exit_code == 0, result.output
    assert received == [expected]


def test_a_command_keeps_its_own_defaults_and_other_parameters():
    received = []
    probe = typer.Typer()

    @probe.command()
    @analysis_options
    def allocate(target: float, analysis: AnalyzeSettings = AnalyzeSettings(xmin="peak", min_evals=20), quiet: bool = False) -> None:
        received.append((target, analysis, quiet))

    assert CliRunner().invoke(probe, ["0.5", "--quiet"]).exit_code == 0
    assert CliRunner().invoke(probe, ["0.5", "--xmin", "ks"]).exit_code == 0
    assert received == [
        (0.5, AnalyzeSettings(xmin="peak", min_evals=20), True),
        (0.5, AnalyzeSettings(xmin="ks", min_evals=20), False),
    ]


def test_a_command_without_a_settings_parameter_is_refused():
    with pytest.raises(TypeError, match="needs one parameter whose default is an AnalyzeSettings, not 0"):
        analysis_options(lambda quiet=False: None)


@pytest.mark.parametrize("path", list(COMMANDS))
@pytest.mark.parametrize(("options", "message"), [
    (("--xmin", "foo"), "--xmin foo: must be one of ks, median, peak (see 'htsr {path} --help')"),
    (("--device", "tpu"), "--device tpu: must be one of auto, cpu, cuda (see 'htsr {path} --help')"),
    (("--min-evals", "x"), "--min-evals: must be an integer (see 'htsr {path} --help')"),
    (("--farms-window", "100"), "--farms-window 100: only tunes FARMS; add --farms to compute alpha_farms"),
    (("--farms-q", "2"), "--farms-q 2.0: only tunes FARMS; add --farms to compute alpha_farms"),
    (("--farms-steps", "5"), "--farms-steps 5: only tunes FARMS; add --farms to compute alpha_farms"),
    (("--min-evals", "1"), "--min-evals 1: must be at least 2"),
    (("--farms", "--farms-steps", "1"), "--farms-steps 1: must be at least 2 (windows per dimension)"),
    (("--conv-scale", "0"), "--conv-scale 0.0: must be in [1e-06, 1e+06]"),
])
def test_a_bad_value_is_the_same_one_line_error_on_every_command(path, options, message, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    arguments, _ = COMMANDS[path]
    result = CliRunner().invoke(app, [str(argument) for argument in [*arguments, *options]])
    assert result.exit_code == 2
    assert result.stderr.startswith("htsr: error: " + message.format(path=path)), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
