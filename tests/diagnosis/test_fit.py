"""Fitting trees on hand-made tables whose best splits and thresholds are computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from htsr_cli.diagnosis.fit import every_split, fit_cart, fit_md_tree
from htsr_cli.diagnosis.md_tree import FitSettings
from htsr_cli.diagnosis.questions import TEMPERATURE, Rule
from htsr_cli.diagnosis.tree import Leaf, Split, predict
from htsr_cli.errors import HtsrError

def leaves_of(node) -> list[Leaf]:
    return [node] if isinstance(node, Leaf) else leaves_of(node.le) + leaves_of(node.gt)


# x:  1  2  3  4  5  6
# y:  a  a  a  b  b  a
# Weighted Gini of each split of x (left | right), by hand:
#   1.5: 0 and 1-(.6^2+.4^2)=.48 -> 5/6*.48 = .400
#   2.5: 0 and .5                 -> 4/6*.5  = .333
#   3.5: 0 and 1-(4/9+1/9)=4/9    -> 3/6*4/9 = .222   <- best
#   4.5: .375 and .5              -> .250 + .167 = .417
#   5.5: .48 and 0                -> .400
# z = 0 0 1 1 1 1 splits only at .5: 0 and .5 -> .333, worse than x's best.
X = np.array([1.0, 2, 3, 4, 5, 6])
Z = np.array([0.0, 0, 1, 1, 1, 1])
Y = np.array(["a", "a", "a", "b", "b", "a"], dtype=object)


def test_cart_takes_the_split_with_the_lowest_weighted_gini():
    tree = fit_cart({"x": X, "z": Z}, ["z", "x"], Y, max_depth=1)
    assert isinstance(tree, Split) and tree.feature == "x" and tree.threshold == 3.5
    assert tree.le == Leaf("a", {"a": 3, "b": 0})
    assert tree.gt == Leaf("b", {"a": 1, "b": 2})


def test_cart_grows_to_its_depth_limit_and_stops_at_pure_leaves():
    tree = fit_cart({"x": X}, ["x"], Y, max_depth=4)
    # The left side is pure after one split; the right side {4:b, 5:b, 6:a} splits at 5.5 and is then pure.
    assert tree.le == Leaf("a", {"a": 3, "b": 0})
    assert tree.gt.feature == "x" and tree.gt.threshold == 5.5
    assert tree.gt.le == Leaf("b", {"a": 0, "b": 2}) and tree.gt.gt == Leaf("a", {"a": 1, "b": 0})
    assert list(predict(tree, {"x": X})) == list(Y)


def test_cart_breaks_ties_by_the_first_feature_and_keeps_a_leaf_when_nothing_separates():
    tree = fit_cart({"x": X, "copy": X.copy()}, ["copy", "x"], Y, max_depth=1)
    assert tree.feature == "copy"
    same = fit_cart({"x": np.ones(4)}, ["x"], np.array(["a", "b", "b", "a"], dtype=object), max_depth=3)
    assert same == Leaf("a", {"a": 2, "b": 2})  # a tie between classes goes to the first in sorted order


def test_cart_refuses_an_empty_training_set():
    with pytest.raises(HtsrError, match="no training rows"):
        fit_cart({"x": np.array([])}, ["x"], np.array([], dtype=object), max_depth=2)


# Six configurations for the temperature question (train error %, connectivity peak, log Hessian trace):
ROWS = {
    "train_error": np.array([0.2, 0.3, 5.0, 6.0, 7.0, 8.0]),
    "mode_connectivity_peak": np.array([-20.0, -20.0, -2.0, -3.0, -25.0, -25.0]),
    "hessian_t": np.array([5.0, 5.0, 8.0, 8.0, 5.0, 8.0]),
}
LABELS = np.array(["small", "small", "large", "large", "large", "small"], dtype=object)


def test_md_tree_thresholds_fitted_in_the_papers_order_by_hand():
    """Threshold 0 (train error, [0, 1], start .5), with the others at their starts (-10, 7):
    candidates 0, .25, 1: accuracy 4/6, 5/6, 6/6 -> 1.0.
    Threshold 1 (connectivity, [-30, 0], start -10): candidates -30, -22.5, -11.5, -2.5, 0 give
    5/6, 6/6, 6/6, 5/6, 4/6; of the two best, -11.5 is nearer the start.
    Threshold 2 (Hessian, [4, 9], start 7): candidates 4, 6.5, 9 give 5/6, 6/6, 5/6 -> 6.5."""
    tree = fit_md_tree(TEMPERATURE, ROWS, LABELS)
    assert tree.threshold == 1.0
    assert tree.gt.threshold == -11.5
    assert tree.gt.le.threshold == 6.5
    assert [leaf.label for leaf in leaves_of(tree)] == ["small", "large", "small", "large"]
    assert [dict(leaf.counts) for leaf in leaves_of(tree)] == [
        {"large": 0, "small": 2}, {"large": 1, "small": 0}, {"large": 0, "small": 1}, {"large": 2, "small": 0},
    ]
    assert list(predict(tree, ROWS)) == list(LABELS)


def test_every_split_tries_each_partition_inside_the_interval_and_prefers_the_start():
    rule = Rule("x", start=2.0, low=0.0, high=3.0, order=0, le="a", gt="b")
    seen = []

    def accuracy(threshold: float) -> float:
        seen.append(threshold)
        return 1.0 if threshold in (0.5, 2.5) else 0.0

    assert every_split(accuracy, rule, np.array([0.0, 1.0, 2.0, 3.0, 9.0])) == 2.5
    assert seen == [0.0, 0.5, 1.5, 2.5, 3.0]  # the midpoint 6.0 is outside [0, 3] and becomes 3.0


def test_md_tree_refuses_an_empty_training_set():
    empty = {name: np.array([]) for name in ROWS}
    with pytest.raises(HtsrError, match="temperature: no training rows"):
        fit_md_tree(TEMPERATURE, empty, np.array([], dtype=object))


@pytest.mark.parametrize(("settings", "message"), [
    ({"method": "forest"}, "method='forest': must be one of md-tree, cart"),
    ({"max_depth": 0}, "max_depth=0: must be a whole number in [1, 32]"),
    ({"max_depth": True}, "max_depth=True"),
    ({"data_min_width": -1}, "data_min_width=-1: must be a whole number >= 0"),
])
def test_fit_settings_are_checked(settings, message):
    with pytest.raises(HtsrError) as error:
        FitSettings(**settings)
    assert message in str(error.value)
