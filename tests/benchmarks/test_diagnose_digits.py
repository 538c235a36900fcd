"""benchmarks/diagnose_digits.py's pure parts: rooms for improvement, the known causes, the scoring.

The training and the feature computations are the benchmark's (`make bench-diagnose-digits`), not tested here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))

from diagnose_digits import Configuration, Rooms, known_causes, refit_two_fold, rooms_for_improvement, score  # noqa: E402

# A hand-made grid (width, batch size, fraction) -> test error: at width 8 and full data the batch
# sizes make a U (16 best), width 32 is better everywhere, half the data is worse.
ERRORS = {
    Configuration(8, 4, 1.0): 12.0,
    Configuration(8, 16, 1.0): 9.0,
    Configuration(8, 64, 1.0): 10.0,
    Configuration(32, 4, 1.0): 8.0,
    Configuration(32, 16, 1.0): 6.0,
    Configuration(32, 64, 1.0): 6.0,
    Configuration(8, 4, 0.5): 15.0,
    Configuration(8, 16, 0.5): 14.0,
    Configuration(8, 64, 0.5): 10.5,
}


def test_rooms_are_the_best_reachable_improvement_by_one_change():
    rooms = rooms_for_improvement(ERRORS)
    # Batch 4 can only decrease the temperature (larger batches: best 9.0), widen (8.0), not add data.
    assert rooms[Configuration(8, 4, 1.0)] == Rooms(increase_temperature=0.0, decrease_temperature=3.0, width=4.0, data=0.0)
    # Batch 64 at width 8: a smaller batch reaches 9.0; widening reaches 6.0.
    assert rooms[Configuration(8, 64, 1.0)] == Rooms(increase_temperature=1.0, decrease_temperature=0.0, width=4.0, data=0.0)
    # Half the data at batch 16: smaller batch 15 (no room), larger 10.5, more data 9.0; no wider model at half data.
    assert rooms[Configuration(8, 16, 0.5)] == Rooms(increase_temperature=0.0, decrease_temperature=3.5, width=0.0, data=5.0)
    # The widest, full-data, best batch size: nothing helps.
    assert rooms[Configuration(32, 16, 1.0)] == Rooms(0.0, 0.0, 0.0, 0.0)


def test_known_causes_follow_the_dataset_labels():
    assert known_causes(Rooms(0.0, 3.0, 4.0, 0.0)) == {
        "temperature": "large", "width_vs_temperature": "width", "data_vs_temperature": "batch"}
    assert known_causes(Rooms(1.0, 0.0, 0.5, 2.0)) == {
        "temperature": "small", "width_vs_temperature": "batch", "data_vs_temperature": "data"}
    # Ties (e.g. nothing helps) answer no question.
    assert known_causes(Rooms(0.0, 0.0, 0.0, 0.0)) == {
        "temperature": "optimal", "width_vs_temperature": "optimal", "data_vs_temperature": "optimal"}
    assert known_causes(Rooms(2.0, 2.0, 2.0, 1.0))["width_vs_temperature"] == "optimal"


def _row(width, known, diagnosed):
    return {"width": width, "known": known, "diagnosed": diagnosed}


def test_score_counts_labelled_rows_against_the_majority():
    rows = [
        _row(8, {"temperature": "large", "width_vs_temperature": "width", "data_vs_temperature": "data"},
             {"temperature": "large", "width_vs_temperature": "batch", "data_vs_temperature": "data"}),
        _row(32, {"temperature": "large", "width_vs_temperature": "optimal", "data_vs_temperature": "data"},
             {"temperature": "small", "width_vs_temperature": "width", "data_vs_temperature": "data"}),
        _row(64, {"temperature": "small", "width_vs_temperature": "batch", "data_vs_temperature": "batch"},
             {"temperature": "small", "width_vs_temperature": "batch", "data_vs_temperature": "data"}),
        _row(64, {"temperature": "optimal", "width_vs_temperature": "batch", "data_vs_temperature": "optimal"},
             {"temperature": "large", "width_vs_temperature": "width", "data_vs_temperature": "batch"}),
    ]
    table = score(rows)
    assert table["temperature"]["configurations"] == 3
    assert table["temperature"]["accuracy"] == pytest.approx(200 / 3)
    assert (table["temperature"]["majority_label"], table["temperature"]["majority_accuracy"]) == ("large", pytest.approx(200 / 3))
    assert table["width_vs_temperature"]["configurations"] == 3
    assert table["width_vs_temperature"]["correct"] == 1
    assert table["width_vs_temperature"]["labels"] == {"batch": 2, "width": 1}
    # Data vs temperature counts widths >= 32 only (the first row is width 8) and drops 'optimal'.
    assert table["data_vs_temperature"]["configurations"] == 2
    assert table["data_vs_temperature"]["correct"] == 1
    assert table["data_vs_temperature"]["diagnosed"] == {"data": 2}


def test_refit_two_fold_tests_each_half_on_the_other_halfs_thresholds():
    # Temperature labels separated by train error alone (train error <= t0 -> small; the well-connected
    # rest -> large): both folds (batch sizes 8, 32 | 16, 64) learn t0 = 1, the top of the paper's [0, 1]
    # interval, and are right on every held-out row; the 'optimal' row is not counted.
    rows = []
    for batch_size, train_error, label in [(8, 1.0, "small"), (16, 0.5, "small"), (32, 3.0, "large"), (64, 4.0, "large"), (8, 9.0, "optimal")]:
        known = {"temperature": label, "width_vs_temperature": "optimal", "data_vs_temperature": "optimal"}
        features = {"train_error": train_error, "mode_connectivity_peak": -1.0, "hessian_t": 8.0}
        rows.append({"width": 64, "batch_size": batch_size, "known": known, "features": features})
    table = refit_two_fold(rows, [8, 16, 32, 64])
    assert table["temperature"] == {"correct": 4, "accuracy": 100.0}
    assert table["width_vs_temperature"] == {"correct": 0, "accuracy": None}
