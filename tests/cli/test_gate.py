"""`htsr gate` end to end: exit codes, config discovery, JUnit and the step summary, verdict files, real checkpoints."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
import torch
from safetensors.torch import save_file

from htsr_cli.engine.pipeline import analyze
from tests.conftest import FIXTURES
from tests.gate.test_config import write
from tests.gate.test_rules import MIXED, layer, report

TINY_CNN = FIXTURES / "tiny-cnn-trained.pth"


@pytest.fixture(autouse=True)
def no_step_summary(monkeypatch):
    """Tests run inside GitHub Actions too: never write to the real job summary."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


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


def test_gate_writes_its_verdict_to_a_file_and_still_exits_by_it(cli, tmp_path):
    target = tmp_path / "verdict.json"
    result = cli("gate", TINY_CNN, "--alpha-max", "3", "--format", "json", "-o", target, "-q")
    assert result.exit_code == 1 and result.stdout == ""
    verdict = json.loads(target.read_text())
    assert verdict["schema"] == "htsr.gate/1" and verdict["verdict"] == "fail"


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


def test_a_shared_config_with_drift_runs_without_a_baseline(cli, saved, tmp_path, monkeypatch):
    """A pyproject.toml used by CI (with --baseline) and locally (without): drift is reported as not checked."""
    mixed, clean = saved
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "pyproject.toml", "[tool.htsr.gate]\nalpha_max = 8.0\nmax_alpha_drift = 0.5\n")
    local = cli("gate", mixed)
    assert local.exit_code == 0, local.output
    assert "warning  max_alpha_drift  (model)  not checked: no baseline given (--baseline REPORT.json)" in local.stdout
    in_ci = cli("gate", mixed, "--baseline", clean, "--format", "json")
    assert in_ci.exit_code == 0  # a and d unchanged; b, c (new) and e are warnings
    drift = next(rule for rule in json.loads(in_ci.stdout)["rules"] if rule["rule"] == "max_alpha_drift")
    assert (drift["limit"], drift["layers_checked"]) == (0.5, 5)


def test_a_baseline_alone_turns_on_the_default_drift_limit(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "base.json", report(layer("a", 3.0), layer("b", 4.0), name="base.pth").dumps())
    write(tmp_path / "moved.json", report(layer("a", 3.0), layer("b", 4.7), name="moved.pth").dumps())
    result = cli("gate", "moved.json", "--baseline", "base.json")
    assert result.exit_code == 1, result.output
    assert "error    max_alpha_drift  b  |alpha drift|=0.700 > 0.5 (4.000 -> 4.700)" in result.stdout
    assert cli("gate", "moved.json", "--baseline", "base.json", "--max-alpha-drift", "1").exit_code == 0


def test_the_default_gate_passes_minilm(cli, minilm_dir, tmp_path, monkeypatch):
    """all-MiniLM-L6-v2 is a healthy published model: the default gate must pass it under every xmin rule."""
    model = minilm_dir
    monkeypatch.chdir(tmp_path)
    for xmin in ("ks", "median"):
        result = cli("gate", model, "--xmin", xmin)
        assert result.exit_code == 0, result.output
        assert "rules from defaults (no [tool.htsr.gate] found)" in result.stdout
    # the quality band follows the xmin rule: median alphas of MiniLM lie in median's band
    assert cli("gate", model, "--xmin", "median", "--max-flagged", "0.1").exit_code == 0


def test_help_states_the_bands_and_drift_limits_the_gate_uses(cli, monkeypatch):
    from htsr_cli.gate.config import DEFAULT_MAX_ALPHA_DRIFT
    from htsr_cli.settings import QUALITY_BANDS

    monkeypatch.setenv("COLUMNS", "200")
    text = " ".join(cli("gate", "--help").stdout.split())
    assert ", ".join(f"{xmin} {low:g}..{high:g}" for xmin, (low, high) in QUALITY_BANDS.items()) in text
    assert ", ".join(f"{limit:g} for {xmin}" for xmin, limit in DEFAULT_MAX_ALPHA_DRIFT.items()) + ", unless set" in text
