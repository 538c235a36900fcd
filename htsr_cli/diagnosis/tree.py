"""A threshold tree over named features, and what it says about one model.

Every split sends a row left when `value <= threshold` and right otherwise
(the MD tree paper's convention). A leaf keeps the class counts of the
training rows that reached it: its label's share of them is the confidence
the training data gives a diagnosis that ends there, and their number its
support.

    answer = tree.diagnose({"train_error": 0.2, "mode_connectivity_peak": -3.1, "hessian_t": 6.0})
    answer.label, answer.confidence, [step.went for step in answer.path]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from htsr_cli.errors import HtsrError

LEFT = "<="
RIGHT = ">"


@dataclass(frozen=True)
class Leaf:
    label: str
    counts: Mapping[str, int] = field(default_factory=dict)  # training rows that ended here, by class

    @property
    def support(self) -> int:
        return sum(self.counts.values())

    @property
    def confidence(self) -> float | None:
        """The share of the training rows ending here whose class is this leaf's label (None: none did)."""
        return self.counts.get(self.label, 0) / self.support if self.support else None


@dataclass(frozen=True)
class Split:
    feature: str
    threshold: float
    le: Node  # value <= threshold
    gt: Node  # value > threshold


Node = Leaf | Split


@dataclass(frozen=True)
class Step:
    """One comparison on the way to a leaf."""

    feature: str
    value: float
    threshold: float
    went: str  # LEFT or RIGHT


@dataclass(frozen=True)
class Answer:
    label: str
    path: tuple[Step, ...]
    confidence: float | None
    support: int
    counts: Mapping[str, int]


def features_of(node: Node) -> list[str]:
    """The features a tree compares, in the order a walk from the root first meets them."""
    if isinstance(node, Leaf):
        return []
    seen = [node.feature]
    for name in features_of(node.le) + features_of(node.gt):
        if name not in seen:
            seen.append(name)
    return seen


def diagnose(root: Node, features: Mapping[str, float]) -> Answer:
    """Walk the tree with one model's feature values; every feature the path compares must be given."""
    path = []
    node = root
    while isinstance(node, Split):
        if node.feature not in features:
            raise HtsrError(f"the diagnosis needs the feature '{node.feature}', which was not given")
        value = float(features[node.feature])
        if not np.isfinite(value):
            raise HtsrError(f"feature '{node.feature}' must be a finite number, got {value}")
        went = LEFT if value <= node.threshold else RIGHT
        path.append(Step(node.feature, value, node.threshold, went))
        node = node.le if went == LEFT else node.gt
    return Answer(node.label, tuple(path), node.confidence, node.support, dict(node.counts))


def predict(root: Node, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The label of every row of `columns` (feature name -> values, all the same length)."""
    rows = len(next(iter(columns.values())))
    labels = np.empty(rows, dtype=object)
    _assign(root, columns, np.arange(rows), labels)
    return labels


def _assign(node: Node, columns: Mapping[str, np.ndarray], rows: np.ndarray, labels: np.ndarray) -> None:
    if isinstance(node, Leaf):
        labels[rows] = node.label
        return
    left = columns[node.feature][rows] <= node.threshold
    _assign(node.le, columns, rows[left], labels)
    _assign(node.gt, columns, rows[~left], labels)


def with_counts(root: Node, columns: Mapping[str, np.ndarray], labels: np.ndarray, classes: list[str]) -> Node:
    """The same tree with each leaf's counts set to the training rows (`columns`, `labels`) that reach it."""
    return _count(root, columns, np.asarray(labels, dtype=object), np.arange(len(labels)), classes)


def _count(node: Node, columns, labels, rows, classes) -> Node:
    if isinstance(node, Leaf):
        reached = labels[rows]
        return replace(node, counts={name: int(np.sum(reached == name)) for name in classes})
    left = columns[node.feature][rows] <= node.threshold
    return replace(
        node,
        le=_count(node.le, columns, labels, rows[left], classes),
        gt=_count(node.gt, columns, labels, rows[~left], classes),
    )
