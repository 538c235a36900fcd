"""Walking a tree: the path (feature, value, threshold, direction) and the confidence from the training counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from htsr_cli.diagnosis.tree import LEFT, RIGHT, Leaf, Split, diagnose, features_of, predict, with_counts
from htsr_cli.errors import HtsrError

TREE = Split(
    "train_error", 0.5,
    Leaf("small", {"large": 1, "small": 3}),
    Split("mode_connectivity_peak", -10.0, Leaf("large", {"large": 0, "small": 0}), Leaf("large", {"large": 5, "small": 0})),
)


def test_the_path_records_every_comparison_and_the_leaf_its_confidence():
    answer = diagnose(TREE, {"train_error": 12.0, "mode_connectivity_peak": -2.0, "unused": 1.0})
    assert answer.label == "large"
    assert [(step.feature, step.value, step.threshold, step.went) for step in answer.path] == [
        ("train_error", 12.0, 0.5, RIGHT), ("mode_connectivity_peak", -2.0, -10.0, RIGHT),
    ]
    assert answer.confidence == 1.0 and answer.support == 5
    left = diagnose(TREE, {"train_error": 0.5})  # equal to the threshold goes left, as in the paper
    assert left.label == "small" and left.path[0].went == LEFT
    assert left.confidence == 0.75 and left.support == 4 and left.counts == {"large": 1, "small": 3}


def test_a_leaf_no_training_row_reached_has_no_confidence():
    answer = diagnose(TREE, {"train_error": 3.0, "mode_connectivity_peak": -20.0})
    assert answer.label == "large" and answer.support == 0 and answer.confidence is None


def test_only_the_features_on_the_path_are_needed_and_they_must_be_finite():
    assert diagnose(TREE, {"train_error": 0.1}).label == "small"
    with pytest.raises(HtsrError, match="needs the feature 'mode_connectivity_peak'"):
        diagnose(TREE, {"train_error": 3.0})
    with pytest.raises(HtsrError, match="'train_error' must be a finite number"):
        diagnose(TREE, {"train_error": math.nan})


def test_predict_and_counts_agree_with_walking_each_row():
    columns = {"train_error": np.array([0.1, 3.0, 4.0, 0.4]), "mode_connectivity_peak": np.array([0.0, -20.0, 0.0, -30.0])}
    labels = np.array(["small", "small", "large", "large"], dtype=object)
    assert list(predict(TREE, columns)) == [
        diagnose(TREE, {name: values[row] for name, values in columns.items()}).label for row in range(4)
    ]
    counted = with_counts(TREE, columns, labels, ["large", "small"])
    assert counted.le.counts == {"large": 1, "small": 1}
    assert counted.gt.le.counts == {"large": 0, "small": 1} and counted.gt.gt.counts == {"large": 1, "small": 0}
    assert features_of(TREE) == ["train_error", "mode_connectivity_peak"]
