"""htsr gate: each rule on hand-built reports, the config file, the output formats, and the CLI end to end."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from htsr_cli.engine.pipeline import analyze
from htsr_cli.errors import HtsrError
from htsr_cli.gate.config import GateConfig, config_from_table, find_pyproject, parse_max_flagged, resolve_config
from htsr_cli.gate.formats import escape_data, escape_property, gate_github, gate_json, gate_markdown
from htsr_cli.gate.junit import gate_junit
from htsr_cli.gate.rules import ERROR, WARNING, evaluate
from htsr_cli.results.report import LayerResult, Report, quality_of, summarize

from conftest import FIXTURES


@pytest.fixture(autouse=True)
def no_step_summary(monkeypatch):
    """Tests run inside GitHub Actions too: never write to the real job summary."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def layer(name: str, alpha: float | None, status: str = "ok", reason: str | None = None, farms: float | None = None) -> LayerResult:
    return LayerResult(
        name=name, tensor=f"{name}.weight", kind="linear", shape=[64, 32], block=None, params=2048,
        status=status, reason=reason, num_evals=32, alpha=alpha, quality=quality_of(alpha), alpha_farms=farms,
    )


def report(*layers: LayerResult, name: str = "model.pth", farms: bool = False, xmin: str = "ks") -> Report:
    settings = {"xmin": xmin, "farms": {"window": 2000, "q": 1.0, "steps": 10} if farms else None,
                "device": "cpu", "precision": "float64", "conv_scale": 1.0, "min_evals": 10}
    return Report(name, settings, list(layers), summarize(list(layers), 0.0, farms), "0.1.0")


# alphas 2.5, 1.5, 7.0, 3.0 and one skipped layer
MIXED = report(layer("a", 2.5), layer("b", 1.5), layer("c", 7.0), layer("d", 3.0), layer("e", None, "skipped", "fewer than 10 eigenvalues"))


def found(result) -> list[tuple[str, str | None, str]]:
    return [(v.rule, v.layer, v.severity) for v in result.violations]


# ---- each rule alone -------------------------------------------------------------------


def test_alpha_min_passes_and_fails():
    assert evaluate(MIXED, GateConfig(alpha_min=1.5)).passed  # the bound itself is allowed
    result = evaluate(MIXED, GateConfig(alpha_min=2.6))
    assert not result.passed
    assert [(v.layer, v.value, v.limit, v.message) for v in result.violations] == [
        ("a", 2.5, 2.6, "alpha=2.500 < 2.6"),
        ("b", 1.5, 2.6, "alpha=1.500 < 2.6"),
    ]
    assert result.outcomes[0].checked == ("a", "b", "c", "d")  # the skipped layer has no alpha to judge


def test_alpha_max_passes_and_fails():
    assert evaluate(MIXED, GateConfig(alpha_max=7.0)).passed
    result = evaluate(MIXED, GateConfig(alpha_max=2.9))
    assert [(v.layer, v.message) for v in result.errors] == [("c", "alpha=7.000 > 2.9"), ("d", "alpha=3.000 > 2.9")]


def test_max_flagged_count():
    # quality band [2, 6] by default: b (1.5) and c (7.0) are outside
    passing = evaluate(MIXED, GateConfig(max_flagged=2))
    assert passing.passed
    assert [(v.layer, v.severity, v.message) for v in passing.warnings] == [
        ("b", WARNING, "alpha=1.500 outside [2.0, 6.0]"),
        ("c", WARNING, "alpha=7.000 outside [2.0, 6.0]"),
    ]
    failing = evaluate(MIXED, GateConfig(max_flagged=1))
    assert [(v.layer, v.value, v.limit, v.message) for v in failing.errors] == [
        (None, 2, 1, "2 of 4 layers outside [2.0, 6.0] (allowed: 1 layer)")
    ]
    assert len(failing.warnings) == 2


def test_max_flagged_fraction_counts_layers_with_a_value():
    # 2 of the 4 layers with an alpha: 0.5 (the skipped layer is not in the denominator)
    assert evaluate(MIXED, GateConfig(max_flagged=0.5)).passed
    failing = evaluate(MIXED, GateConfig(max_flagged=0.25))
    assert [(v.value, v.limit, v.message) for v in failing.errors] == [
        (0.5, 0.25, "2 of 4 layers (50.0%) outside [2.0, 6.0] (allowed: 25% of layers)")
    ]


def test_max_flagged_band_from_alpha_min_and_max():
    # with max_flagged set, alpha_min/alpha_max only move the band: a, b and c are outside [2.6, 6.5]
    result = evaluate(MIXED, GateConfig(alpha_min=2.6, alpha_max=6.5, max_flagged=2))
    assert [o.rule for o in result.outcomes] == ["max_flagged"]
    assert [(v.layer, v.severity) for v in result.violations] == [
        ("a", WARNING), ("b", WARNING), ("c", WARNING), (None, ERROR)
    ]
    # one end set: the other stays at the quality band's
    assert GateConfig(alpha_max=5.0, max_flagged=0).band == (2.0, 5.0)


def test_mean_alpha_max():
    # mean of 2.5, 1.5, 7.0, 3.0 = 3.5
    assert evaluate(MIXED, GateConfig(mean_alpha_max=3.5)).passed
    result = evaluate(MIXED, GateConfig(mean_alpha_max=3.4))
    assert [(v.layer, v.value, v.message) for v in result.errors] == [(None, 3.5, "mean alpha=3.500 > 3.4")]
    empty = evaluate(report(layer("x", None, "fit-failed", "no fit")), GateConfig(mean_alpha_max=3.0))
    assert [(v.rule, v.message) for v in empty.errors] == [
        ("allow_empty", "no layer has a value of alpha to check (1 layer: 1 fit-failed); "
         "set allow_empty = true (or --allow-empty) to pass such a model")
    ]


def test_max_alpha_drift_matches_layers_by_name():
    baseline = report(layer("a", 2.0), layer("b", 3.0), layer("c", 4.0), layer("gone", 3.0), layer("f", None, "fit-failed", "no fit"), name="base.json")
    current = report(layer("a", 2.25), layer("b", 3.5), layer("c", None, "fit-failed", "no fit"), layer("f", 3.0), layer("new", 5.0))
    # b drifts by exactly 0.5 (a by 0.25): allowed at 0.5; c lost its alpha whatever the limit
    assert [v.layer for v in evaluate(current, GateConfig(max_alpha_drift=0.5), baseline).errors] == ["c"]
    result = evaluate(current, GateConfig(max_alpha_drift=0.25), baseline)
    assert [(v.layer, v.severity, v.message) for v in result.violations] == [
        ("b", ERROR, "|alpha drift|=0.500 > 0.25 (3.000 -> 3.500)"),
        ("f", WARNING, "no alpha in the baseline"),
        ("c", ERROR, "alpha lost: 4.000 in the baseline, none now"),
        ("gone", WARNING, "in the baseline only"),
        ("new", WARNING, "not in the baseline"),
    ]
    assert result.baseline == "base.json"


def test_max_alpha_drift_passes_against_itself_and_flags_foreign_baselines():
    assert evaluate(MIXED, GateConfig(max_alpha_drift=0.0), MIXED).violations == []
    other = report(layer("x", 3.0), name="other.json", xmin="median")
    result = evaluate(MIXED, GateConfig(max_alpha_drift=1.0), other)
    messages = [v.message for v in result.violations if v.layer is None]
    assert messages == [
        "settings differ from the baseline (xmin: 'median' vs 'ks')",
        "no layer with a value of alpha in common with the baseline other.json",
    ]
    assert not result.passed


def test_require_layers():
    assert evaluate(report(layer("a", 3.0), layer("b", 4.0)), GateConfig(require_layers=True)).passed
    result = evaluate(MIXED, GateConfig(require_layers=True))
    assert [(v.layer, v.message) for v in result.errors] == [("e", "skipped: fewer than 10 eigenvalues")]


def test_every_violation_of_every_rule_is_reported():
    config = GateConfig(alpha_min=2.0, alpha_max=6.0, mean_alpha_max=3.0, require_layers=True)
    result = evaluate(MIXED, config)
    assert found(result) == [
        ("alpha_min", "b", ERROR),
        ("alpha_max", "c", ERROR),
        ("mean_alpha_max", None, ERROR),
        ("require_layers", "e", ERROR),
    ]
    assert [o.passed for o in result.outcomes] == [False, False, False, False]


def test_metric_alpha_farms():
    farms_report = report(layer("a", 2.5, farms=4.0), layer("b", 3.0, farms=6.5), farms=True)
    result = evaluate(farms_report, GateConfig(metric="alpha_farms", alpha_max=6.0))
    assert [(v.layer, v.message) for v in result.errors] == [("b", "alpha_farms=6.500 > 6.0")]
    with pytest.raises(HtsrError, match="alpha_farms needs FARMS alphas; analyze with --farms"):
        evaluate(MIXED, GateConfig(metric="alpha_farms", alpha_max=6.0))


def test_baseline_and_drift_go_together():
    with pytest.raises(HtsrError, match="max_alpha_drift needs --baseline"):
        evaluate(MIXED, GateConfig(max_alpha_drift=0.5))
    with pytest.raises(HtsrError, match="--baseline is only used by max_alpha_drift"):
        evaluate(MIXED, GateConfig(alpha_max=6.0), MIXED)


# ---- config ----------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_config_discovered_from_a_nested_directory(tmp_path, monkeypatch):
    pyproject = write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n\n[tool.htsr.gate]\nalpha_max = 5\nrequire_layers = true\n')
    write(tmp_path / "a" / "pyproject.toml", '[project]\nname = "sub"\n')  # no gate table: keep walking
    nested = tmp_path / "a" / "b" / "c"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    shown = Path("../../../pyproject.toml")  # relative to the current directory, as linters print it
    assert find_pyproject(Path.cwd()) == shown
    assert shown.resolve() == pyproject.resolve()
    config = resolve_config(None, Path.cwd(), {})
    assert (config.alpha_max, config.require_layers, config.max_flagged, config.origin) == (5.0, True, None, str(shown))
    assert resolve_config(None, Path.cwd(), {"alpha_min": 1.0}).origin == f"{shown} and flags"


def test_no_config_means_the_default_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = resolve_config(None, tmp_path, {})
    assert (config.max_flagged, config.band, config.origin) == (0.1, (2.0, 6.0), "defaults (no [tool.htsr.gate] found)")
    # a single rule from a flag replaces the default
    from_flag = resolve_config(None, tmp_path, {"alpha_min": 1.0})
    assert (from_flag.max_flagged, from_flag.origin) == (None, "flags")
    # a table that only picks the metric sets no rule either
    only_metric = write(tmp_path / "gate.toml", '[tool.htsr.gate]\nmetric = "alpha_farms"\n')
    config = resolve_config(only_metric, tmp_path, {})
    assert (config.metric, config.max_flagged, config.origin) == ("alpha_farms", 0.1, f"defaults ({only_metric} sets no rule)")


def test_flags_override_config(tmp_path):
    path = write(tmp_path / "gate.toml", "[tool.htsr.gate]\nalpha_min = 2\nalpha_max = 5\nrequire_layers = true\n")
    config = resolve_config(path, tmp_path, {"alpha_max": 6.5, "require_layers": False, "alpha_min": None})
    assert (config.alpha_min, config.alpha_max, config.require_layers) == (2.0, 6.5, False)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"alpha_mn": 2}, "unknown key 'alpha_mn' (known: metric, alpha_min, alpha_max, max_flagged, mean_alpha_max, max_alpha_drift, require_layers, allow_empty, allow_failed)"),
        ({"alpha_min": "two"}, "'alpha_min' must be a number, got 'two'"),
        ({"alpha_min": True}, "'alpha_min' must be a number, got True"),
        ({"require_layers": 1}, "'require_layers' must be true or false, got 1"),
        ({"metric": "beta"}, "'metric' must be one of alpha, alpha_farms, got 'beta'"),
        ({"max_flagged": 1.5}, "'max_flagged' must be a whole number of layers (e.g. 3) or a fraction in [0, 1) (e.g. 0.1), got 1.5"),
        ({"max_flagged": -1}, "got -1"),
        ({"alpha_min": 5, "alpha_max": 3}, "alpha_min (5.0) is above alpha_max (3.0)"),
    ],
)
def test_bad_config_values_name_the_key(table, message):
    with pytest.raises(HtsrError) as error:
        config_from_table(table, "pyproject.toml")
    assert str(error.value).startswith("pyproject.toml [tool.htsr.gate]: ")
    assert message in str(error.value)


def test_max_flagged_flag_parses_counts_and_fractions():
    assert (parse_max_flagged("3"), parse_max_flagged("0.1")) == (3, 0.1)
    assert isinstance(parse_max_flagged("3"), int)
    for bad in ("lots", "2.5", "-1"):
        with pytest.raises(HtsrError, match="max-flagged"):
            parse_max_flagged(bad)


# ---- output formats --------------------------------------------------------------------

FAILING = GateConfig(alpha_min=2.0, alpha_max=6.0, mean_alpha_max=3.0, require_layers=True)


def test_junit_counts_match_the_violations():
    result = evaluate(MIXED, FAILING)
    root = ET.fromstring(gate_junit(result))
    suite = root.find("testsuite")
    assert suite.get("name") == "htsr gate"
    cases = suite.findall("testcase")
    # alpha_min, alpha_max: 4 layers each; mean_alpha_max: 1; require_layers: 5 layers
    assert int(suite.get("tests")) == len(cases) == 14
    failed = [case for case in cases if case.find("failure") is not None]
    assert int(suite.get("failures")) == len(failed) == len(result.errors) == 4
    assert [(c.get("classname"), c.get("name"), c.find("failure").get("message")) for c in failed] == [
        ("htsr.gate.alpha_min", "b", "alpha=1.500 < 2.0"),
        ("htsr.gate.alpha_max", "c", "alpha=7.000 > 6.0"),
        ("htsr.gate.mean_alpha_max", "mean_alpha_max", "mean alpha=3.500 > 3.0"),
        ("htsr.gate.require_layers", "e", "skipped: fewer than 10 eigenvalues"),
    ]


def test_junit_warnings_are_not_failures():
    root = ET.fromstring(gate_junit(evaluate(MIXED, GateConfig(max_flagged=2))))
    (case,) = root.iter("testcase")
    assert case.find("failure") is None
    assert case.find("system-out").text == "warning: b: alpha=1.500 outside [2.0, 6.0]\nwarning: c: alpha=7.000 outside [2.0, 6.0]"
    assert root.get("failures") == "0"


ANNOTATION = re.compile(r"^::(error|warning) title=([^:,\r\n]*)::([^\r\n]*)$")


def test_github_annotations_follow_the_workflow_command_syntax():
    lines = gate_github(evaluate(MIXED, FAILING)).splitlines()
    annotations = [line for line in lines if line.startswith("::")]
    assert len(annotations) == 4
    for line in annotations:
        assert ANNOTATION.match(line), line
    assert annotations[0] == "::error title=htsr gate%3A alpha_min::b: alpha=1.500 < 2.0"
    assert lines[-1] == "htsr gate FAIL: 4 violations, 0 warnings; 4 of 4 rules failed on 5 layers"


def test_github_escaping():
    assert escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert escape_property("a:b,c%") == "a%3Ab%2Cc%25"
    odd = report(layer("enc:0,1\nx", 9.0))
    (line, _) = gate_github(evaluate(odd, GateConfig(alpha_max=6.0))).splitlines()
    # The newline is escaped visibly (printable) before GitHub's own escaping: no second line, no command.
    assert line == "::error title=htsr gate%3A alpha_max::enc:0,1\\x0ax: alpha=9.000 > 6.0"


def test_json_and_markdown():
    result = evaluate(MIXED, GateConfig(max_flagged=1, require_layers=True))
    data = gate_json(result)
    assert (data["schema"], data["verdict"], data["metric"]) == ("htsr.gate/1", "fail", "alpha")
    assert data["counts"] == {"layers": 5, "rules": 2, "rules_failed": 2, "violations": 2, "warnings": 2}
    assert data["rules"][0] == {
        "rule": "max_flagged", "limit": 1, "description": "at most 1 layer with alpha outside [2.0, 6.0]",
        "passed": False, "layers_checked": 4, "violations": 1, "warnings": 2, "band": [2.0, 6.0],
    }
    assert data["violations"][0] == {
        "rule": "max_flagged", "layer": "b", "severity": "warning", "value": 1.5, "limit": 2.0,
        "message": "alpha=1.500 outside [2.0, 6.0]",
    }
    markdown = gate_markdown(result)
    assert markdown.startswith("## htsr gate: FAIL\n")
    assert "| max_flagged | at most 1 layer with alpha outside [2.0, 6.0] | 4 | 1 | 2 | FAIL |" in markdown
    assert "| error | require_layers | e | skipped: fewer than 10 eigenvalues |" in markdown


# ---- the command -----------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    """MIXED and a clean report as htsr.report/1 files."""
    mixed = write(tmp_path / "mixed.json", MIXED.dumps())
    clean = write(tmp_path / "clean.json", report(layer("a", 2.5), layer("d", 3.0), name="clean.pth").dumps())
    return mixed, clean


def test_exit_codes(cli, saved, tmp_path, monkeypatch):
    mixed, clean = saved
    monkeypatch.chdir(tmp_path)  # no pyproject.toml above tmp: the default rule
    passed = cli("gate", clean)
    assert passed.exit_code == 0, passed.output
    assert "PASS: 0 violations, 0 warnings; 0 of 1 rule failed on 2 layers" in passed.stdout
    failed = cli("gate", mixed, "--alpha-min", "2", "--alpha-max", "6")
    assert failed.exit_code == 1
    assert "alpha_min  b  alpha=1.500 < 2.0" in failed.stdout
    assert "alpha_max  c  alpha=7.000 > 6.0" in failed.stdout
    assert "FAIL: 2 violations" in failed.stdout
    missing = cli("gate", tmp_path / "nope.json")
    assert missing.exit_code == 2
    assert "nope.json" in missing.stderr
    not_a_report = write(tmp_path / "config.json", '{"schema": "something/1"}')
    wrong = cli("gate", not_a_report)
    assert (wrong.exit_code, wrong.stderr.strip()) == (2, f"htsr: error: {not_a_report}: not an htsr.report/1 report (schema is 'something/1')")
    assert cli("gate", clean, "--max-alpha-drift", "0.3").exit_code == 2
    assert cli("gate", clean, "--max-flagged", "many").exit_code == 2
    assert "alpha_farms needs FARMS" in cli("gate", clean, "--metric", "alpha_farms").stderr
    options = cli("gate", clean, "--xmin", "median")
    assert (options.exit_code, options.stderr.strip()) == (
        2, f"htsr: error: {clean} is a saved report: analysis options (--xmin, --farms, ...) apply only to a checkpoint"
    )


def test_cli_config_discovery_and_errors(cli, saved, tmp_path, monkeypatch):
    mixed, _ = saved
    nested = tmp_path / "a" / "b" / "c"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    write(tmp_path / "pyproject.toml", "[tool.htsr.gate]\nalpha_max = 8.0\n")
    pyproject = "../../../pyproject.toml"
    assert cli("gate", mixed).exit_code == 0  # c = 7.0 is under 8
    overridden = cli("gate", mixed, "--alpha-max", "6.5")
    assert overridden.exit_code == 1
    assert f"rules from {pyproject} and flags" in overridden.stdout

    write(tmp_path / "pyproject.toml", "[tool.htsr.gate]\nalpha_mn = 2\n")
    unknown = cli("gate", mixed)
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith(f"htsr: error: {pyproject} [tool.htsr.gate]: unknown key 'alpha_mn' (known: metric, ")

    write(tmp_path / "pyproject.toml", "[tool.htsr.gate]\nalpha_min = 'two'\n")
    wrong_type = cli("gate", mixed)
    assert (wrong_type.exit_code, wrong_type.stderr.strip()) == (
        2, f"htsr: error: {pyproject} [tool.htsr.gate]: 'alpha_min' must be a number, got 'two'"
    )

    write(tmp_path / "pyproject.toml", "[tool.htsr.gate\nalpha_min = 2\n")
    unreadable = cli("gate", mixed)
    assert unreadable.exit_code == 2
    assert unreadable.stderr.startswith(f"htsr: error: {pyproject}: cannot read TOML (")

    no_table = write(tmp_path / "other.toml", "[tool.ruff]\nline-length = 100\n")
    explicit = cli("gate", mixed, "--config", no_table)
    assert (explicit.exit_code, explicit.stderr.strip()) == (
        2, f"htsr: error: {no_table}: no [tool.htsr.gate] table (see `htsr gate --help` for its keys)"
    )
    assert "missing.toml: no such file or directory" in cli("gate", mixed, "--config", tmp_path / "missing.toml").stderr


def test_junit_file_and_step_summary(cli, saved, tmp_path, monkeypatch):
    mixed, _ = saved
    monkeypatch.chdir(tmp_path)
    summary = write(tmp_path / "summary.md", "# Earlier step\n\nits summary\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    junit = tmp_path / "junit.xml"
    result = cli("gate", mixed, "--alpha-max", "6", "--require-layers", "--junit", junit, "--format", "github")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[:2] == [
        "::error title=htsr gate%3A alpha_max::c: alpha=7.000 > 6.0",
        "::error title=htsr gate%3A require_layers::e: skipped: fewer than 10 eigenvalues",
    ]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("9", "2")  # 4 layers with alpha + 5 layers
    text = summary.read_text()
    assert text.startswith("# Earlier step\n\nits summary\n## htsr gate: FAIL\n")
    cli("gate", mixed, "--alpha-max", "6")
    assert summary.read_text().count("## htsr gate: FAIL") == 2  # appended again, never overwritten


def test_json_format(cli, saved, tmp_path, monkeypatch):
    mixed, clean = saved
    monkeypatch.chdir(tmp_path)
    result = cli("gate", mixed, "--baseline", clean, "--max-alpha-drift", "0.1", "--format", "json")
    assert result.exit_code == 0  # a and d unchanged; b and c are new layers (warnings), e too
    data = json.loads(result.stdout)
    assert (data["verdict"], data["baseline"], data["counts"]["warnings"]) == ("pass", "clean.pth", 3)


# ---- real checkpoints ------------------------------------------------------------------


def trained_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "tiny-cnn-trained.pth", weights_only=True)


def test_report_json_gives_the_same_verdict_as_its_checkpoint(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = {key: value for key, value in trained_state_dict().items() if key.startswith(("fc2", "fc3"))}
    save_file(state, tmp_path / "small.safetensors")
    assert cli("analyze", "small.safetensors", "--format", "json", "-o", "small.json").exit_code == 0
    rules = ["--alpha-max", "3.0", "--mean-alpha-max", "2.5", "--format", "json"]
    from_checkpoint = cli("gate", "small.safetensors", *rules)
    from_report = cli("gate", "small.json", *rules)
    assert from_checkpoint.exit_code == from_report.exit_code == 1
    assert json.loads(from_checkpoint.stdout) == json.loads(from_report.stdout)
    # fc2's alpha is 3.19 (fixtures/README.md): over the limit
    assert [v["layer"] for v in json.loads(from_report.stdout)["violations"]] == ["fc2", None]


def test_a_degraded_checkpoint_fails_the_gate(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    healthy = analyze(FIXTURES / "tiny-cnn-trained.pth")
    write(tmp_path / "healthy.json", healthy.dumps())
    degraded = trained_state_dict()
    weight = degraded["fc1.weight"]
    degraded["fc1.weight"] = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std()
    torch.save(degraded, tmp_path / "degraded.pth")

    # thresholds from the healthy model: its highest alpha plus a margin, and a drift budget of 1
    alpha_max = str(round(max(l.alpha for l in healthy.layers) + 1.0, 2))
    rules = ["--alpha-max", alpha_max, "--baseline", "healthy.json", "--max-alpha-drift", "1.0", "--format", "json"]
    assert cli("gate", "healthy.json", *rules).exit_code == 0
    result = cli("gate", "degraded.pth", *rules)
    assert result.exit_code == 1
    violations = json.loads(result.stdout)["violations"]
    # Gaussian noise has a Marchenko-Pastur spectrum: alpha far above the trained ~2.8
    assert [(v["rule"], v["layer"]) for v in violations] == [("alpha_max", "fc1"), ("max_alpha_drift", "fc1")]
    assert violations[1]["value"] > 4.0
