"""Learning trees from a population of trained models: the MD tree's thresholds, and plain CART.

`fit_md_tree` keeps the question's fixed shape and learns its thresholds the
paper's way: one after the other (in the shape's `order`), each set to the
value in its search interval that maximises training accuracy with the
others held. The paper finds that value with SciPy's bounded Brent search;
accuracy is a step function of the threshold, so here every distinct
partition of the training rows inside the interval is tried instead (the
midpoints between consecutive feature values), which finds the best one
rather than a local one (`every_split`). Among equally accurate thresholds the
one closest to the starting value wins, so a small training set moves a
threshold no further than its rows require. `search` takes another strategy
(the benchmark passes the paper's Brent search to reproduce its numbers).

`fit_cart` grows an unconstrained tree (CART, Gini impurity) to a depth
limit: the "plain decision tree" baseline. Written here in numpy (a few dozen
lines) so the package needs no scikit-learn; ties between equally good splits
go to the first feature, then the lowest threshold, so results are
deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from htsr_cli.diagnosis.questions import Question, Rule
from htsr_cli.diagnosis.tree import Leaf, Node, Split, predict, with_counts
from htsr_cli.errors import HtsrError


# How one threshold is chosen: from the training accuracy it gives (a function of the threshold),
# the rule (start and interval) and the feature's training values.
ThresholdSearch = Callable[[Callable[[float], float], Rule, np.ndarray], float]


def every_split(accuracy: Callable[[float], float], rule: Rule, values: np.ndarray) -> float:
    """The most accurate of the thresholds that split `values` differently in [low, high]; ties: nearest the start."""
    candidates = _candidates(values, rule.low, rule.high)
    scores = np.array([accuracy(candidate) for candidate in candidates])
    best = np.flatnonzero(scores == scores.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - rule.start))]])


def fit_md_tree(
    question: Question, columns: Mapping[str, np.ndarray], labels: np.ndarray, search: ThresholdSearch = every_split
) -> Node:
    """The question's shape with thresholds fitted to `labels`, and each leaf's training counts."""
    labels = np.asarray(labels, dtype=object)
    if len(labels) == 0:
        raise HtsrError(f"{question.name}: no training rows to fit the tree on")
    thresholds = {rule.order: rule.start for rule in _rules(question.shape)}
    for rule in sorted(_rules(question.shape), key=lambda rule: rule.order):

        def accuracy(threshold: float, order: int = rule.order) -> float:
            trial = {**thresholds, order: threshold}
            return float(np.mean(predict(_tree(question.shape, trial), columns) == labels))

        thresholds[rule.order] = search(accuracy, rule, np.asarray(columns[rule.feature], dtype=np.float64))
    return with_counts(_tree(question.shape, thresholds), columns, labels, list(question.classes))


def _rules(rule: Rule | str) -> list[Rule]:
    return [] if isinstance(rule, str) else [rule, *_rules(rule.le), *_rules(rule.gt)]


def _tree(rule: Rule | str, thresholds: Mapping[int, float]) -> Node:
    if isinstance(rule, str):
        return Leaf(rule)
    return Split(rule.feature, thresholds[rule.order], _tree(rule.le, thresholds), _tree(rule.gt, thresholds))


def _candidates(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """One threshold in [low, high] for each different way it can split `values` (and the two ends)."""
    distinct = np.unique(values)
    midpoints = (distinct[:-1] + distinct[1:]) / 2
    return np.unique(np.concatenate([[low, high], np.clip(midpoints, low, high)]))


def fit_cart(
    columns: Mapping[str, np.ndarray], features: Sequence[str], labels: np.ndarray, max_depth: int
) -> Node:
    """A CART tree (Gini) on `features`, grown until its leaves are pure, cannot split, or reach `max_depth`."""
    labels = np.asarray(labels, dtype=object)
    if len(labels) == 0:
        raise HtsrError("no training rows to fit the tree on")
    classes = sorted(set(labels))
    codes = np.searchsorted(np.asarray(classes, dtype=object), labels)
    matrix = np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in features])
    root = _grow(matrix, codes, list(features), classes, max_depth)
    return with_counts(root, columns, labels, classes)


def _grow(matrix: np.ndarray, codes: np.ndarray, features: list[str], classes: list[str], depth: int) -> Node:
    counts = np.bincount(codes, minlength=len(classes))
    majority = Leaf(classes[int(np.argmax(counts))])  # ties: the first class in sorted order
    if depth == 0 or np.count_nonzero(counts) < 2:
        return majority
    best = _best_split(matrix, codes, len(classes))
    if best is None:
        return majority
    column, threshold = best
    left = matrix[:, column] <= threshold
    return Split(
        features[column],
        threshold,
        _grow(matrix[left], codes[left], features, classes, depth - 1),
        _grow(matrix[~left], codes[~left], features, classes, depth - 1),
    )


def _best_split(matrix: np.ndarray, codes: np.ndarray, n_classes: int) -> tuple[int, float] | None:
    """(column, threshold) with the lowest weighted Gini impurity of the two sides; None: nothing separates rows."""
    rows = len(codes)
    one_hot = np.eye(n_classes)[codes]
    best_impurity, best = np.inf, None
    for column in range(matrix.shape[1]):
        order = np.argsort(matrix[:, column], kind="stable")
        values = matrix[order, column]
        left_counts = np.cumsum(one_hot[order], axis=0)[:-1]  # rows 0..i on the left
        right_counts = one_hot.sum(axis=0) - left_counts
        left_sizes = np.arange(1, rows)
        right_sizes = rows - left_sizes
        impurity = (
            left_sizes * _gini(left_counts, left_sizes) + right_sizes * _gini(right_counts, right_sizes)
        ) / rows
        splittable = values[1:] > values[:-1]  # only between different values
        if not splittable.any():
            continue
        impurity = np.where(splittable, impurity, np.inf)
        index = int(np.argmin(impurity))  # the lowest threshold among ties
        if impurity[index] < best_impurity:
            best_impurity, best = impurity[index], (column, float((values[index] + values[index + 1]) / 2))
    return best


def _gini(counts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    shares = counts / sizes[:, None]
    return 1.0 - np.sum(shares**2, axis=1)
