"""The gate's configuration: [tool.htsr.gate] found from a nested directory, defaults, flags, and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from htsr_cli.errors import HtsrError
from htsr_cli.gate.config import GateConfig, check_drift_flag, config_from_table, find_pyproject, parse_max_flagged, resolve_config
from htsr_cli.settings import QUALITY_BANDS


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


def test_no_config_means_the_default_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = resolve_config(None, tmp_path, {})
    # no band rule: only the checks every gate runs (broken fits; drift when given a baseline)
    assert (config.has_rules, config.max_flagged, config.max_alpha_drift, config.origin) == (
        False, None, None, "defaults (no [tool.htsr.gate] found)"
    )
    from_flag = resolve_config(None, tmp_path, {"alpha_min": 1.0})
    assert (from_flag.alpha_min, from_flag.origin) == (1.0, "flags")
    # a table that only picks the metric sets no rule either
    only_metric = write(tmp_path / "gate.toml", '[tool.htsr.gate]\nmetric = "alpha_farms"\n')
    config = resolve_config(only_metric, tmp_path, {})
    assert (config.metric, config.has_rules, config.origin) == ("alpha_farms", False, f"defaults ({only_metric} sets no rule)")


@pytest.mark.parametrize(("xmin", "band"), [("ks", (2.0, 6.0)), ("median", QUALITY_BANDS["median"]), ("peak", QUALITY_BANDS["peak"])])
def test_the_band_follows_the_xmin_rule(xmin, band):
    assert GateConfig(max_flagged=0.1).band(xmin) == band
    # a configured end wins over the rule's band
    assert GateConfig(max_flagged=0.1, alpha_max=9.0).band(xmin) == (band[0], 9.0)


def test_drift_flag_needs_a_baseline():
    check_drift_flag(None, False)
    check_drift_flag(0.5, True)
    with pytest.raises(HtsrError, match=r"^--max-alpha-drift needs --baseline REPORT.json"):
        check_drift_flag(0.5, False)


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
