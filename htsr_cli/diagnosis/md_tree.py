"""The MD tree as a whole: one fitted tree per question, where it came from, and its saved form.

    tree = shipped_tree()                                     # fitted on the public dataset (md_tree.json)
    diagnosis = diagnose_features({"train_error": 0.3, "mode_connectivity_peak": -2.0, "hessian_t": 6.1})
    tree = fit_population(read_population("mine.csv"), FitSettings(), protocol="...")
    write_atomic("tree.json", dumps_json(tree.to_json()))

`diagnose_features` is where any source of features plugs in: a JSON file or
flags today, and the loss-landscape metrics of two seeds' models (computed by
`htsr_cli.landscape`) when that path is wired to it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from htsr_cli import __version__
from htsr_cli.diagnosis.fit import fit_cart, fit_md_tree
from htsr_cli.diagnosis.questions import NO_FAILURE, QUESTIONS, Question, shape_features
from htsr_cli.diagnosis.table import Population
from htsr_cli.diagnosis.tree import Answer, Leaf, Node, Split, diagnose, features_of, predict, with_counts
from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.io import PathLike, read_document
from htsr_cli.results.documents import COUNT, NAME, TEXT, Kind, check_fields, number, parse_json

TREE_SCHEMA = "htsr.md_tree/1"
DIAGNOSIS_SCHEMA = "htsr.diagnosis/1"
SHIPPED = Path(__file__).with_name("md_tree.json")
MAX_DEPTH = 32  # the deepest tree htsr fits (--max-depth) or reads; a saved tree nested deeper is not one
WIDTH = "width"
SHARE = number(0.0, 1.0)
FINITE = number()
COUNTS = Kind(
    lambda value: isinstance(value, dict) and all(COUNT.test(item) for item in value.values()),
    "an object of whole numbers >= 0",
)


FIT_METHODS = ("md-tree", "cart")


@dataclass(frozen=True)
class FitSettings:
    """How `fit_population` fits each question's tree, and on which rows.

    method: "md-tree" keeps the paper's shape and fits its thresholds; "cart" grows a free CART tree
    (Gini) on the same features, at most `max_depth` deep (4: the paper's baseline trees).
    data_min_width: the data-vs-temperature question learns from models at least this wide; the
    paper uses 32 on its ResNet-18 grid (widths 2..128); 0 uses every row.
    """

    method: str = "md-tree"
    max_depth: int = 4
    data_min_width: int = 32

    def __post_init__(self) -> None:
        if self.method not in FIT_METHODS:
            raise InvalidSetting("method", self.method, f"must be one of {', '.join(FIT_METHODS)}")
        if isinstance(self.max_depth, bool) or not isinstance(self.max_depth, int) or not 1 <= self.max_depth <= MAX_DEPTH:
            raise InvalidSetting("max_depth", self.max_depth, f"must be a whole number in [1, {MAX_DEPTH}]")
        if isinstance(self.data_min_width, bool) or not isinstance(self.data_min_width, int) or self.data_min_width < 0:
            raise InvalidSetting("data_min_width", self.data_min_width, "must be a whole number >= 0")


@dataclass(frozen=True)
class Provenance:
    table: str
    rows: int
    protocol: str
    fitted_on: str  # ISO date
    htsr_version: str


@dataclass(frozen=True)
class FittedQuestion:
    question: Question
    root: Node
    rows: int  # training rows (those with a class label)
    train_accuracy: float


@dataclass(frozen=True)
class MDTree:
    questions: tuple[FittedQuestion, ...]
    provenance: Provenance

    @property
    def features(self) -> list[str]:
        names: list[str] = []
        for fitted in self.questions:
            names += [name for name in features_of(fitted.root) if name not in names]
        return names

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": TREE_SCHEMA,
            "htsr_version": self.provenance.htsr_version,
            "source": {
                "table": self.provenance.table,
                "rows": self.provenance.rows,
                "protocol": self.provenance.protocol,
                "fitted_on": self.provenance.fitted_on,
            },
            "questions": [
                {
                    "name": fitted.question.name,
                    "label_column": fitted.question.label_column,
                    "rows": fitted.rows,
                    "train_accuracy": fitted.train_accuracy,
                    "root": _node_json(fitted.root),
                }
                for fitted in self.questions
            ],
        }


@dataclass(frozen=True)
class Diagnosis:
    tree: MDTree
    features: Mapping[str, float]
    answers: tuple[tuple[Question, Answer], ...]

    def to_json(self) -> dict[str, Any]:
        source = self.tree.to_json()["source"]
        return {
            "schema": DIAGNOSIS_SCHEMA,
            "htsr_version": __version__,
            "tree": {**source, "htsr_version": self.tree.provenance.htsr_version},
            "features": dict(self.features),
            "answers": [
                {
                    "question": question.name,
                    "asks": question.asks,
                    "diagnosis": answer.label,
                    "meaning": question.meanings[answer.label],
                    "confidence": answer.confidence,
                    "support": answer.support,
                    "counts": dict(answer.counts),
                    "path": [
                        {"feature": step.feature, "value": step.value, "threshold": step.threshold, "went": step.went}
                        for step in answer.path
                    ],
                }
                for question, answer in self.answers
            ],
        }


def diagnose_features(features: Mapping[str, float], tree: MDTree | None = None) -> Diagnosis:
    """Every question of `tree` (default: the shipped one) answered for one configuration's features."""
    tree = tree or shipped_tree()
    missing = [name for name in tree.features if name not in features]
    if missing:
        raise HtsrError(f"the diagnosis needs {', '.join(missing)}: give {'it' if len(missing) == 1 else 'them'} too")
    answers = tuple((fitted.question, diagnose(fitted.root, features)) for fitted in tree.questions)
    used = {name: float(features[name]) for name in tree.features}
    return Diagnosis(tree, used, answers)


def fit_population(population: Population, settings: FitSettings, protocol: str) -> MDTree:
    """A tree per question whose label column `population` has, fitted on its labelled rows."""
    asked = [question for question in QUESTIONS.values() if population.has(question.label_column)]
    if not asked:
        columns = ", ".join(question.label_column for question in QUESTIONS.values())
        raise HtsrError(f"{population.source}: no label column to fit on (needs at least one of {columns})")
    fitted = []
    for question in asked:
        columns = {name: population.numbers(name) for name in shape_features(question.shape)}
        labels = population.labels(question.label_column, {*question.classes, NO_FAILURE})
        keep = labels != NO_FAILURE
        min_width = settings.data_min_width if question.min_width else 0
        if min_width:
            keep &= population.numbers(WIDTH) >= min_width
        if not keep.any():
            raise HtsrError(
                f"{population.source}: no row has a '{question.label_column}' class"
                + (f" at width >= {min_width}" if min_width else "")
            )
        columns = {name: values[keep] for name, values in columns.items()}
        if settings.method == "cart":
            grown = fit_cart(columns, shape_features(question.shape), labels[keep], settings.max_depth)
            root = with_counts(grown, columns, labels[keep], list(question.classes))  # every class, even absent ones
        else:
            root = fit_md_tree(question, columns, labels[keep])
        accuracy = float(np.mean(predict(root, columns) == labels[keep]))
        fitted.append(FittedQuestion(question, root, int(keep.sum()), accuracy))
    provenance = Provenance(
        table=Path(population.source).name,
        rows=len(population.rows),
        protocol=protocol,
        fitted_on=datetime.date.today().isoformat(),
        htsr_version=__version__,
    )
    return MDTree(tuple(fitted), provenance)


def _node_json(node: Node) -> dict[str, Any]:
    if isinstance(node, Leaf):
        return {"label": node.label, "counts": dict(node.counts)}
    return {"feature": node.feature, "threshold": node.threshold, "le": _node_json(node.le), "gt": _node_json(node.gt)}


# ---- reading a saved tree: nothing in it is trusted ----

def shipped_tree() -> MDTree:
    """The tree fitted on the public Model Diagnosis Dataset, shipped in the package."""
    return load_tree(SHIPPED)


def load_tree(path: PathLike) -> MDTree:
    source = str(path)
    return tree_from_json(parse_json(read_document(path), source), source)


def tree_from_json(data: Any, source: str) -> MDTree:
    check_fields(data, {"schema": TEXT, "htsr_version": NAME}, source, required=("schema", "source", "questions"))
    if data["schema"] != TREE_SCHEMA:
        raise HtsrError(f"{source}: 'schema' must be {TREE_SCHEMA!r}, got {data['schema']!r}")
    _no_other_keys(data, {"schema", "htsr_version", "source", "questions"}, source)
    origin = data["source"]
    check_fields(
        origin, {"table": TEXT, "rows": COUNT, "protocol": TEXT, "fitted_on": TEXT}, f"{source}: source",
        required=("table", "rows", "protocol", "fitted_on"),
    )
    _no_other_keys(origin, {"table", "rows", "protocol", "fitted_on"}, f"{source}: source")
    entries = data["questions"]
    if not isinstance(entries, list) or not entries:
        raise HtsrError(f"{source}: 'questions' must be a non-empty list")
    fitted, seen = [], set()
    for number, entry in enumerate(entries):
        where = f"{source}: question {number}"
        check_fields(
            entry, {"name": NAME, "label_column": NAME, "rows": COUNT, "train_accuracy": SHARE},
            where, required=("name", "label_column", "rows", "train_accuracy", "root"),
        )
        _no_other_keys(entry, {"name", "label_column", "rows", "train_accuracy", "root"}, where)
        question = QUESTIONS.get(entry["name"])
        if question is None:
            raise HtsrError(f"{where}: unknown question {entry['name']!r} (known: {', '.join(QUESTIONS)})")
        if entry["name"] in seen:
            raise HtsrError(f"{where}: question {entry['name']!r} appears twice")
        if entry["label_column"] != question.label_column:
            raise HtsrError(f"{where}: 'label_column' must be {question.label_column!r} for {question.name}")
        seen.add(entry["name"])
        root = _node_from_json(entry["root"], question, f"{where}: root", 0)
        fitted.append(FittedQuestion(question, root, entry["rows"], float(entry["train_accuracy"])))
    provenance = Provenance(
        origin["table"], origin["rows"], origin["protocol"], origin["fitted_on"], data.get("htsr_version", "unknown")
    )
    return MDTree(tuple(fitted), provenance)


def _node_from_json(data: Any, question: Question, where: str, depth: int) -> Node:
    if depth > MAX_DEPTH:
        raise HtsrError(f"{where}: nested deeper than {MAX_DEPTH} splits")
    if isinstance(data, dict) and "label" in data:
        check_fields(data, {"counts": COUNTS}, where, required=("label", "counts"))
        _no_other_keys(data, {"label", "counts"}, where)
        if data["label"] not in question.classes:
            raise HtsrError(
                f"{where}: label {data['label']!r} is not a class of {question.name} "
                f"({', '.join(question.classes)})"
            )
        unknown = sorted(set(data["counts"]) - set(question.classes))
        if unknown:
            raise HtsrError(f"{where}: counts has {unknown[0]!r}, not a class of {question.name}")
        return Leaf(data["label"], {name: data["counts"].get(name, 0) for name in question.classes})
    check_fields(data, {"feature": NAME, "threshold": FINITE}, where, required=("feature", "threshold", "le", "gt"))
    _no_other_keys(data, {"feature", "threshold", "le", "gt"}, where)
    return Split(
        data["feature"],
        float(data["threshold"]),
        _node_from_json(data["le"], question, f"{where}.le", depth + 1),
        _node_from_json(data["gt"], question, f"{where}.gt", depth + 1),
    )


def _no_other_keys(data: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise HtsrError(f"{where}: unexpected field {extra[0]!r}")
