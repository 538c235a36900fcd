"""The paper's evaluation protocol: the training rows each case allows, and deterministic accuracies."""

from __future__ import annotations

import numpy as np
import pytest

from htsr_cli.diagnosis.evaluation import CASES, Case, evaluate_case, question_rows, training_rows
from htsr_cli.diagnosis.questions import TEMPERATURE, WIDTH_VS_TEMPERATURE
from htsr_cli.diagnosis.table import read_population
from htsr_cli.errors import InvalidSetting
from tests.diagnosis.dataset import DATA, needs_data, synthetic_population

@pytest.fixture()
def populations(tmp_path):
    synthetic_population(tmp_path / "basic.csv", 0)
    synthetic_population(tmp_path / "noisy.csv", 1)
    return read_population(tmp_path / "basic.csv"), read_population(tmp_path / "noisy.csv")


def test_random_pairs_are_the_rows_the_papers_global_seed_would_pick(populations):
    """The paper seeds NumPy's global generator and draws pair indices with np.random.choice."""
    basic, _ = populations
    rows = question_rows(basic, TEMPERATURE)
    case = Case("pairs", TEMPERATURE, "pairs", 3, ("log_data_amount",), {})
    picked = training_rows(rows, case, seed=42)
    pairs = [(d, w) for d in (1.0, 2.0, 3.0) for w in (8.0, 16.0, 32.0, 64.0)]
    np.random.seed(42)
    expected = {pairs[index] for index in np.random.choice(len(pairs), size=3, replace=False)}
    assert set(zip(picked.columns["data"], picked.columns["width"])) == expected
    everything = set(zip(rows.columns["data"], rows.columns["width"], rows.columns["hessian_t"]))
    chosen = {row for row in everything if (row[0], row[1]) in expected}
    assert set(zip(picked.columns["data"], picked.columns["width"], picked.columns["hessian_t"])) == chosen
    assert "optimal" not in set(picked.labels)


def test_limits_keep_the_small_configurations_only(populations):
    basic, _ = populations
    rows = question_rows(basic, WIDTH_VS_TEMPERATURE)
    by_data = training_rows(rows, Case("d", WIDTH_VS_TEMPERATURE, "data_limit", 2, ("log_data_amount",), {}), 0)
    assert set(by_data.columns["data"]) == {1.0, 2.0} and len(by_data.labels) == 2 * 4 * 3
    by_width = training_rows(rows, Case("w", WIDTH_VS_TEMPERATURE, "width_limit", 16, ("log_data_amount",), {}), 0)
    assert set(by_width.columns["width"]) == {8.0, 16.0}
    with pytest.raises(InvalidSetting, match="sampling='everything'"):
        Case("bad", TEMPERATURE, "everything", 1, (), {})


def test_accuracies_are_deterministic(populations):
    basic, noisy = populations
    for case in (CASES[0], CASES[1], CASES[3]):
        small = Case(case.name, case.question, case.sampling, 1, case.hyperparameters, case.paper)
        first = evaluate_case(small, basic, noisy)
        again = evaluate_case(small, basic, noisy)
        assert [outcome.accuracies for outcome in first] == [outcome.accuracies for outcome in again]
        assert [outcome.method for outcome in first] == ["md_tree", "validation_dt", "hyperparameter_dt", "landscape_dt"]
        assert all(0 <= value <= 100 for outcome in first for value in outcome.accuracies)


@needs_data
def test_the_papers_scale_transfer_case_on_the_real_tables():
    """Q1, trained on the 5K-image configurations: the baselines land on the paper's Table B numbers."""
    basic = read_population(DATA / "dataframe_normal_public.csv")
    noisy = read_population(DATA / "dataframe_noise_public.csv")
    outcomes = {outcome.method: outcome for outcome in evaluate_case(CASES[1], basic, noisy)}
    assert outcomes["md_tree"].train_rows == (156,)
    assert round(outcomes["validation_dt"].mean, 2) == 51.73 == CASES[1].paper["validation_dt"]
    assert round(outcomes["hyperparameter_dt"].mean, 2) == 64.74 == CASES[1].paper["hyperparameter_dt"]
    assert round(outcomes["md_tree"].mean, 2) == 90.19
