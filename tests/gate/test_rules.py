"""Gate rules (htsr_cli/gate/rules.py), each on hand-built reports."""

from __future__ import annotations

import pytest

from htsr_cli.errors import HtsrError
from htsr_cli.gate.config import DEFAULT_MAX_ALPHA_DRIFT, GateConfig
from htsr_cli.gate.rules import ERROR, WARNING, evaluate
from htsr_cli.results.report import LayerResult, Report, quality_of, summarize
from htsr_cli.settings import QUALITY_BANDS


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
    assert [o.rule for o in result.outcomes] == ["max_flagged", "failed_layers"]
    assert [(v.layer, v.severity) for v in result.violations] == [
        ("a", WARNING), ("b", WARNING), ("c", WARNING), (None, ERROR)
    ]
    # one end set: the other stays at the quality band's
    assert GateConfig(alpha_max=5.0, max_flagged=0).band("ks") == (2.0, 5.0)


def test_max_flagged_uses_the_band_of_the_reports_xmin_rule():
    # median-xmin alphas sit lower (the fit starts in the bulk): 1.7 is a healthy median alpha
    low, high = QUALITY_BANDS["median"]
    median = report(layer("a", 1.7), layer("b", 2.4), layer("c", high + 1.0), xmin="median")
    result = evaluate(median, GateConfig(max_flagged=0))
    assert [(v.layer, v.message) for v in result.violations] == [
        ("c", f"alpha={high + 1.0:.3f} outside [{low}, {high}]"),
        (None, f"1 of 3 layers outside [{low}, {high}] (allowed: 0 layers)"),
    ]
    assert result.band == (low, high)
    assert not evaluate(report(layer("a", 1.7), xmin="ks"), GateConfig(max_flagged=0)).passed


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


def test_the_default_checks_broken_fits_and_drift_when_given_a_baseline():
    broken = report(layer("a", 3.0), layer("b", None, "fit-failed", "no valid power-law fit"), layer("c", 12.0))
    result = evaluate(broken, GateConfig())
    assert [(o.rule, o.passed) for o in result.outcomes] == [("failed_layers", False)]
    assert [(v.layer, v.message) for v in result.errors] == [("b", "fit-failed: no valid power-law fit")]
    # no band by default: an alpha of 12 is not a failure on its own
    assert evaluate(report(layer("a", 3.0), layer("c", 12.0)), GateConfig()).passed
    # a baseline turns on max_alpha_drift at its default limit
    baseline = report(layer("a", 3.0), layer("c", 4.0), name="base.json")
    drifted = evaluate(report(layer("a", 3.4), layer("c", 12.0)), GateConfig(), baseline)
    assert [(o.rule, o.limit) for o in drifted.outcomes] == [("max_alpha_drift", 0.5), ("failed_layers", None)]
    assert [(v.layer, v.message) for v in drifted.errors] == [("c", "|alpha drift|=8.000 > 0.5 (4.000 -> 12.000)")]
    assert evaluate(report(layer("a", 3.4), layer("c", 4.2)), GateConfig(), baseline).passed
    # median alphas move less: its default limit is tighter
    median_baseline = report(layer("a", 2.0), name="base.json", xmin="median")
    moved = evaluate(report(layer("a", 2.2), xmin="median"), GateConfig(), median_baseline)
    assert (moved.outcomes[0].limit, moved.passed) == (DEFAULT_MAX_ALPHA_DRIFT["median"], False)


def test_a_configured_drift_without_a_baseline_is_not_checked_and_says_so():
    result = evaluate(MIXED, GateConfig(max_alpha_drift=0.5, alpha_max=8.0))
    assert result.passed
    assert [(v.rule, v.severity, v.message) for v in result.violations] == [
        ("max_alpha_drift", WARNING, "not checked: no baseline given (--baseline REPORT.json)")
    ]