"""The MD tree's questions: what each asks, which dataset column labels it, and the tree's shape.

The MD tree (Zhou et al., ICML 2024) is not grown freely: its splits, their
features and the class of every leaf are fixed by what loss landscapes say
about training (a model that does not fit its training set is in a
different regime from one that does; poorly connected seeds mean a too-small
temperature or model; sharp minima mean a too-small temperature). Only the
thresholds are learnt from a population of trained models. Each threshold
has a starting value and a search interval, taken from the paper's code
(YefanZhou/ModelDiagnosis, method/md_tree.py), and `order`: the paper fits
them one after the other in that order.

Units are the dataset's: `train_error` in percent, `mode_connectivity_peak`
minus the highest training error (percent) along a Bezier curve joining two
seeds' models, `hessian_t` the natural log of the Hessian trace on the
training set.
"""

from __future__ import annotations

from dataclasses import dataclass

TRAIN_ERROR = "train_error"
CONNECTIVITY = "mode_connectivity_peak"
HESSIAN_TRACE = "hessian_t"

# Rows whose improvement is the same either way (the dataset's 'optimal') answer none of the questions.
NO_FAILURE = "optimal"


@dataclass(frozen=True)
class Rule:
    """A split of the fixed shape, with where its threshold search starts and the interval it searches."""

    feature: str
    start: float
    low: float
    high: float
    order: int  # which threshold the paper fits first (0), second (1), ...
    le: Rule | str  # a Rule, or a leaf's label
    gt: Rule | str


@dataclass(frozen=True)
class Question:
    name: str
    asks: str
    label_column: str
    classes: tuple[str, ...]
    meanings: dict[str, str]
    shape: Rule
    # The paper studies data-vs-temperature on wide models only: below width 32 the model
    # itself is the failure and neither answer applies (scripts/q2_predict_data_temp.sh).
    min_width: int = 0


TEMPERATURE = Question(
    name="temperature",
    asks="Q1: is the optimizer temperature (learning rate / batch size) too large or too small?",
    label_column="bs_failure",
    classes=("large", "small"),
    meanings={
        "large": "temperature too large: batch size too small (or learning rate too large)",
        "small": "temperature too small: batch size too large (or learning rate too small)",
    },
    shape=Rule(
        TRAIN_ERROR, 0.5, 0.0, 1.0, 0,
        le="small",  # fits the training set
        gt=Rule(
            CONNECTIVITY, -10.0, -30.0, 0.0, 1,
            le=Rule(HESSIAN_TRACE, 7.0, 4.0, 9.0, 2, le="large", gt="small"),  # poorly connected: flat or sharp
            gt="large",  # well connected
        ),
    ),
)

WIDTH_VS_TEMPERATURE = Question(
    name="width_vs_temperature",
    asks="Q2: is the model too small (width), or is the optimizer temperature the failure?",
    label_column="width_vs_batch",
    classes=("width", "batch"),
    meanings={
        "width": "model too small: more parameters (width) helps most",
        "batch": "optimizer temperature (batch size / learning rate) is the failure",
    },
    shape=Rule(
        TRAIN_ERROR, 0.5, 0.0, 1.0, 0,
        le=Rule(CONNECTIVITY, -10.0, -30.0, 0.0, 1, le="width", gt="batch"),
        gt=Rule(CONNECTIVITY, -10.0, -30.0, 0.0, 2, le="width", gt="batch"),
    ),
)

DATA_VS_TEMPERATURE = Question(
    name="data_vs_temperature",
    asks="Q2: is there too little training data, or is the optimizer temperature the failure?",
    label_column="data_vs_batch",
    classes=("data", "batch"),
    meanings={
        "data": "too little training data: more data helps most",
        "batch": "optimizer temperature (batch size / learning rate) is the failure",
    },
    shape=Rule(
        TRAIN_ERROR, 0.5, 0.0, 1.0, 0,
        le=Rule(
            CONNECTIVITY, -10.0, -30.0, 0.0, 1,
            le=Rule(HESSIAN_TRACE, 7.0, 4.0, 9.0, 4, le="data", gt="batch"),
            gt=Rule(HESSIAN_TRACE, 7.0, 4.0, 9.0, 2, le="data", gt="batch"),
        ),
        gt=Rule(
            CONNECTIVITY, -10.0, -30.0, 0.0, 3,
            le="batch",
            gt=Rule(HESSIAN_TRACE, 7.0, 4.0, 9.0, 5, le="data", gt="batch"),
        ),
    ),
    min_width=32,
)

QUESTIONS = {question.name: question for question in (TEMPERATURE, WIDTH_VS_TEMPERATURE, DATA_VS_TEMPERATURE)}


def shape_features(rule: Rule | str) -> list[str]:
    """The features a shape compares, in the order a walk from the root first meets them."""
    if isinstance(rule, str):
        return []
    seen = [rule.feature]
    for name in shape_features(rule.le) + shape_features(rule.gt):
        if name not in seen:
            seen.append(name)
    return seen
