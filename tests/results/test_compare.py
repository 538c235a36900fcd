"""compare_reports: per-layer deltas and settings differences on hand-built reports."""

from __future__ import annotations

import pytest

from htsr_cli.results.compare import compare_reports
from htsr_cli.errors import HtsrError

from tests.gate.test_rules import layer, report


def test_deltas_sorted_by_size_then_layers_without_one():
    a = report(layer("x", 2.0), layer("y", 3.0), layer("z", 4.0), layer("dead", 3.0), layer("old", 2.5), name="a.pth")
    b = report(layer("new", 5.0), layer("x", 2.5), layer("y", 2.0), layer("z", 4.0), layer("dead", None, "fit-failed", "no fit"), name="b.pth")
    comparison = compare_reports(a, b)
    assert [(d.name, d.before, d.after, d.delta, d.status) for d in comparison.layers] == [
        ("y", 3.0, 2.0, -1.0, "compared"),
        ("x", 2.0, 2.5, 0.5, "compared"),
        ("z", 4.0, 4.0, 0.0, "compared"),
        ("dead", 3.0, None, None, "no value in B"),
        ("old", 2.5, None, None, "only in A"),
        ("new", None, 5.0, None, "only in B"),
    ]
    assert comparison.summary() == {
        "layers_compared": 3,
        "mean_before": 3.0,
        "mean_after": 2.8333333333333335,  # (2.5 + 2 + 4) / 3
        "mean_delta": -1 / 6,  # (0.5 - 1 + 0) / 3
        "mean_abs_delta": 0.5,
        "largest_change": {"name": "y", "name_b": None, "before": 3.0, "after": 2.0, "delta": -1.0,
                           "status": "compared", "relative_error": None, "lambda_max_change": None},
        "without_value": 1,
        "only_in_a": 1,
        "only_in_b": 1,
        "mean_relative_error": None,  # only with --weights
        "max_relative_error": None,
    }
    data = comparison.to_json()
    assert (data["schema"], data["a"], data["b"], data["metric"], data["weights"], data["settings_differences"]) == (
        "htsr.compare/1", "a.pth", "b.pth", "alpha", False, []
    )


def test_settings_differences_and_farms():
    a = report(layer("x", 2.0, farms=2.2), farms=True)
    b = report(layer("x", 2.0, farms=2.7), farms=True, xmin="median")
    comparison = compare_reports(a, b, "alpha_farms")
    assert comparison.settings_differences == ("xmin: 'ks' vs 'median'",)
    assert comparison.layers[0].delta == pytest.approx(0.5)
    with pytest.raises(HtsrError, match="B model.pth: metric alpha_farms needs FARMS alphas"):
        compare_reports(a, report(layer("x", 2.0)), "alpha_farms")
