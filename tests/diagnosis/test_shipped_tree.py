"""The shipped tree: it loads, says where it came from, and answers as the paper's predictors would with its thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from htsr_cli.diagnosis.md_tree import SHIPPED, diagnose_features, shipped_tree
from htsr_cli.diagnosis.questions import QUESTIONS
from htsr_cli.diagnosis.table import read_population
from htsr_cli.diagnosis.tree import Split, predict
from tests.diagnosis.dataset import DATA, needs_data


def preorder_thresholds(node) -> list[float]:
    return [node.threshold, *preorder_thresholds(node.le), *preorder_thresholds(node.gt)] if isinstance(node, Split) else []


# The paper's three predictors (method/md_tree.py), transcribed: X = (train_error, mode_connectivity_peak, hessian_t).
def paper_temperature(x, t):
    if x[0] <= t[0]:
        return "small"
    if x[1] <= t[1]:
        return "large" if x[2] <= t[2] else "small"
    return "large"


def paper_width(x, t):
    if x[0] <= t[0]:
        return "width" if x[1] <= t[1] else "batch"
    return "width" if x[1] <= t[2] else "batch"


def paper_data(x, t):
    if x[0] <= t[0]:
        if x[1] <= t[1]:
            return "data" if x[2] <= t[4] else "batch"
        return "data" if x[2] <= t[2] else "batch"
    if x[1] <= t[3]:
        return "batch"
    return "data" if x[2] <= t[5] else "batch"


def paper_thresholds(tree) -> dict[str, list[float]]:
    """The shipped thresholds in the paper's numbering (its data tree fits t4 before t2 and t3 in a walk)."""
    roots = {fitted.question.name: fitted.root for fitted in tree.questions}
    data = preorder_thresholds(roots["data_vs_temperature"])  # walk order: t0, t1, t4, t2, t3, t5
    return {
        "temperature": preorder_thresholds(roots["temperature"]),
        "width_vs_temperature": preorder_thresholds(roots["width_vs_temperature"]),
        "data_vs_temperature": [data[0], data[1], data[3], data[4], data[2], data[5]],
    }


PAPER = {"temperature": paper_temperature, "width_vs_temperature": paper_width, "data_vs_temperature": paper_data}

# Rows of dataframe_normal_public.csv (line numbers of the file) and what the shipped tree answers for them.
EXAMPLES = [
    # line, train_error, mode_connectivity_peak, hessian_t -> temperature, width vs temperature, data vs temperature
    (3, 40.519555555555556, -34.91555555555556, 5.33524400551432, "large", "width", "batch"),
    (100, 16.04400000000001, -56.87, 7.828410688564074, "small", "width", "batch"),
    (391, 0.0, -27.480000000000004, 6.184015163728619, "small", "width", "data"),
    (585, 8.415428571428578, -1.057142857142864, 6.845875234425714, "large", "batch", "batch"),
    (779, 0.0, -0.0, 5.522954148198997, "small", "batch", "batch"),
    (1264, 0.0, -0.0, 4.295807936577807, "small", "batch", "data"),
]


def test_the_shipped_tree_says_where_it_came_from_and_answers_every_question():
    tree = shipped_tree()
    document = json.loads(SHIPPED.read_text())
    assert document["schema"] == "htsr.md_tree/1" and document["source"]["table"] == "dataframe_normal_public.csv"
    assert "basic collection" in tree.provenance.protocol and tree.provenance.rows == 1690
    assert [fitted.question.name for fitted in tree.questions] == list(QUESTIONS)
    assert tree.features == ["train_error", "mode_connectivity_peak", "hessian_t"]
    for fitted in tree.questions:  # the paper's shape, every threshold inside the paper's interval
        assert same_shape(fitted.question.shape, fitted.root)


def same_shape(rule, node) -> bool:
    if isinstance(rule, str):
        return not isinstance(node, Split) and node.label == rule
    return (
        isinstance(node, Split) and node.feature == rule.feature and rule.low <= node.threshold <= rule.high
        and same_shape(rule.le, node.le) and same_shape(rule.gt, node.gt)
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line{example[0]}" for example in EXAMPLES])
def test_the_shipped_tree_answers_dataset_rows_as_the_papers_tree_would(example):
    _, train_error, connectivity, hessian, *expected = example
    tree = shipped_tree()
    thresholds = paper_thresholds(tree)
    diagnosis = diagnose_features(
        {"train_error": train_error, "mode_connectivity_peak": connectivity, "hessian_t": hessian}, tree
    )
    answers = {question.name: answer.label for question, answer in diagnosis.answers}
    paper = {name: PAPER[name]((train_error, connectivity, hessian), thresholds[name]) for name in PAPER}
    assert answers == paper == dict(zip(PAPER, expected))


@needs_data
@pytest.mark.parametrize("table", ["dataframe_normal_public.csv", "dataframe_noise_public.csv"])
def test_on_every_row_of_both_tables_the_shipped_tree_is_the_papers_tree(table):
    population = read_population(DATA / table)
    columns = {name: population.numbers(name) for name in ("train_error", "mode_connectivity_peak", "hessian_t")}
    rows = np.column_stack(list(columns.values()))
    tree = shipped_tree()
    thresholds = paper_thresholds(tree)
    for fitted in tree.questions:
        ours = predict(fitted.root, columns)
        paper = [PAPER[fitted.question.name](row, thresholds[fitted.question.name]) for row in rows]
        assert list(ours) == paper
