"""The report's `settings` object, built from the request (AnalyzeSettings) and the run's record (RunRecord).

The expected dicts are what `AnalyzeSettings.to_json(device_used, xmin_candidates,
gram_precisions)` wrote before the two were split: same keys, order and values.
"""

from __future__ import annotations

import torch

import htsr_cli
from htsr_cli.results.report import RunRecord, report_settings
from htsr_cli.settings import AnalyzeSettings, FarmsSettings


def items(settings: dict) -> list[tuple]:
    """Key order is part of the bytes written: compare it too."""
    return list(settings.items())


def test_default_settings_on_the_cpu():
    record = RunRecord("cpu", "exact", frozenset({"float32"}), "float64")
    assert items(report_settings(AnalyzeSettings(), record)) == items({
        "xmin": "ks", "xmin_candidates": "exact", "farms": None, "device": "cpu", "precision": "mixed",
        "gram_precision": "float32", "eigensolver_precision": "float64", "conv_scale": 1.0, "min_evals": 10,
        "layers": None, "max_memory": None,
    })


def test_every_setting_given_and_the_device_resolved():
    settings = AnalyzeSettings(
        xmin="peak", farms=FarmsSettings(window=500, q=2.0, steps=4), device="auto", precision="float32",
        conv_scale=0.5, min_evals=20, layers="mlp", max_memory="8GB", concurrent_solves=False,
    )
    record = RunRecord("cuda", "grid", frozenset({"float64"}), "float64")
    assert items(report_settings(settings, record)) == items({
        "xmin": "peak", "xmin_candidates": "grid", "farms": {"window": 500, "q": 2.0, "steps": 4},
        "device": "cuda", "precision": "float32", "gram_precision": "float64",
        "eigensolver_precision": "float64", "conv_scale": 0.5, "min_evals": 20, "layers": "mlp",
        "max_memory": 8_000_000_000,
    })


def test_both_gram_dtypes_are_joined_in_sorted_order():
    record = RunRecord("cpu", "exact", frozenset({"float64", "float32"}), "float32")
    written = report_settings(AnalyzeSettings(xmin="median", precision="float32", max_memory=2**30), record)
    assert items(written) == items({
        "xmin": "median", "xmin_candidates": "exact", "farms": None, "device": "cpu", "precision": "float32",
        "gram_precision": "float32+float64", "eigensolver_precision": "float32", "conv_scale": 1.0,
        "min_evals": 10, "layers": None, "max_memory": 1073741824,
    })


def test_analyze_records_what_the_run_used():
    """mixed mode keeps float64 weights in a float64 Gram; xmin=peak solves in float64 whatever was asked."""
    g = torch.Generator().manual_seed(0)
    weights = {"a.weight": torch.randn(64, 48, generator=g), "b.weight": torch.randn(80, 40, generator=g).double()}
    assert items(htsr_cli.analyze(weights, device="cpu").settings) == items({
        "xmin": "ks", "xmin_candidates": "exact", "farms": None, "device": "cpu", "precision": "mixed",
        "gram_precision": "float32+float64", "eigensolver_precision": "float64", "conv_scale": 1.0,
        "min_evals": 10, "layers": None, "max_memory": None,
    })
    peak = htsr_cli.analyze(weights, device="cpu", xmin="peak", precision="float32")
    assert (peak.settings["precision"], peak.settings["gram_precision"], peak.settings["eigensolver_precision"]) == (
        "float32", "float64", "float64",
    )


def test_a_run_that_solved_nothing_names_its_modes_gram():
    weights = {"a.weight": torch.ones(8, 6)}  # 6 eigenvalues: under min_evals, skipped
    report = htsr_cli.analyze(weights, device="cpu", precision="float32")
    assert report.summary["analyzed"] == 0
    assert (report.settings["gram_precision"], report.settings["eigensolver_precision"]) == ("float32", "float32")
