"""PruneSettings holds AlphaPruning's allocation as a SparsitySettings, and one device."""

from __future__ import annotations

from pathlib import Path

from htsr_cli.allocations import SparsitySettings
from htsr_cli.pruning import CalibrationSettings, PruneSettings
from htsr_cli.settings import AnalyzeSettings, FarmsSettings


def test_alphapruning_settings_are_the_sparsity_settings_allocate_takes():
    settings = PruneSettings(target=0.7, epsilon=0.2, granularity="matrix", clip=False)
    assert settings.sparsity == SparsitySettings(target=0.7, epsilon=0.2, granularity="matrix", clip=False, metric="alpha")
    assert settings.target == 0.7 and settings.analysis == AnalyzeSettings(xmin="peak")
    assert PruneSettings(target=0.7).sparsity == SparsitySettings(target=0.7)


def test_farms_in_the_analysis_makes_alphapruning_allocate_from_alpha_farms():
    settings = PruneSettings(target=0.5, analysis=AnalyzeSettings(xmin="peak", farms=FarmsSettings()))
    assert settings.sparsity.metric == "alpha_farms"


def test_other_allocations_have_no_sparsity_settings():
    calibration = CalibrationSettings(Path("c.txt"))
    assert PruneSettings(target=0.5, allocation="uniform").sparsity is None
    assert PruneSettings(target=0.5, allocation="owl", calibration=calibration).sparsity is None
    plan = PruneSettings(target=None, allocation="plan.json")
    assert plan.sparsity is None and plan.plan_file == Path("plan.json")
    # uniform pruning has no per-layer cap, so a target above AlphaPruning's 0.99 stays allowed
    assert PruneSettings(target=0.995, allocation="uniform").target == 0.995


def test_one_device_for_the_analysis_and_the_run():
    assert PruneSettings(target=0.5).device == "auto"
    settings = PruneSettings(target=0.5, device="cpu")
    assert settings.device == settings.analysis.device == "cpu"
    assert settings.analysis.xmin == "peak"  # only the device is replaced
    assert PruneSettings(target=0.5, analysis=AnalyzeSettings(xmin="ks", device="cpu")).device == "cpu"
