"""htsr diagnose: why a model fails, from loss-landscape features (the MD tree)
(examples in the command's help)."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Group
from rich.text import Text

from htsr_cli.cli._landscape_options import (
    CurveLrOpt,
    CurveStepsOpt,
    InputOptions,
    MaxIterationsOpt,
    PointsOpt,
    ToleranceOpt,
    input_options,
)
from htsr_cli.cli._output import emit_renderable, emit_text, layer_progress, table_width
from htsr_cli.cli._options import OutputOpt, QuietOpt
from htsr_cli.diagnosis.md_tree import MAX_DEPTH, Diagnosis, FitSettings, diagnose_features, fit_population, load_tree
from htsr_cli.diagnosis.questions import CONNECTIVITY, HESSIAN_TRACE, TRAIN_ERROR
from htsr_cli.diagnosis.table import read_population
from htsr_cli.errors import HtsrError
from htsr_cli.io import check_output_paths, read_document
from htsr_cli.render.outputs import Column, printable, to_csv
from htsr_cli.render.terminal import terminal_table
from htsr_cli.results.documents import check_fields, dumps_json, parse_json


class FitMethod(str, Enum):
    md_tree = "md-tree"
    cart = "cart"


class DiagnoseFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


PATH_COLUMNS = [
    Column("question", "question", justify="left"),
    Column("diagnosis", "diagnosis", justify="left"),
    Column("confidence", "confidence", 3),
    Column("support", "support"),
    Column("step", "step"),
    Column("feature", "feature", justify="left"),
    Column("value", "value", 4),
    Column("went", "went", justify="left"),
    Column("threshold", "threshold", 4),
]


@input_options
def diagnose(
    models: Annotated[Optional[list[str]], typer.Argument(
        metavar="MODEL",
        help="Two seeds of one configuration (whole-model torch files with --trust-pickle, or Hugging Face directories): "
        "their features are computed on --data (training error, Bezier mode-connectivity peak, log Hessian trace).",
        show_default=False,
    )] = None,
    features_file: Annotated[Optional[Path], typer.Option("--features", help="A JSON object of feature values, named as the dataset's columns (train_error, mode_connectivity_peak, hessian_t).", dir_okay=False, show_default="none")] = None,
    train_error: Annotated[Optional[float], typer.Option("--train-error", help="Training error, in percent (0-100).", show_default="none")] = None,
    mode_connectivity_peak: Annotated[Optional[float], typer.Option("--mode-connectivity-peak", help="Minus the highest training error (percent) along a Bezier curve joining two seeds' models (<= 0).", show_default="none")] = None,
    hessian_t: Annotated[Optional[float], typer.Option("--hessian-t", help="Natural log of the Hessian trace on the training set.", show_default="none")] = None,
    tree_file: Annotated[Optional[Path], typer.Option("--tree", help="A tree written by `htsr diagnose --fit` instead of the shipped one.", dir_okay=False, show_default="shipped tree")] = None,
    fit: Annotated[Optional[Path], typer.Option("--fit", help="Fit the MD tree's thresholds on this CSV table (the Model Diagnosis Dataset's columns) and write the tree.", dir_okay=False, show_default="none")] = None,
    method: Annotated[Optional[FitMethod], typer.Option("--method", help="With --fit: md-tree keeps the paper's tree shapes and fits their thresholds; cart grows a free CART tree (Gini) on the same features.", show_default="md-tree")] = None,
    max_depth: Annotated[Optional[int], typer.Option("--max-depth", help="With --fit --method cart: the deepest the tree may grow.", min=1, max=MAX_DEPTH, show_default="4")] = None,
    data_min_width: Annotated[Optional[int], typer.Option("--data-min-width", help="With --fit: the data-vs-temperature question learns from models at least this wide (0: all).", min=0, show_default="32")] = None,
    inputs: InputOptions = InputOptions(),
    max_iterations: MaxIterationsOpt = 100,
    tolerance: ToleranceOpt = 1e-3,
    curve_steps: CurveStepsOpt = 200,
    curve_learning_rate: CurveLrOpt = 0.01,
    points: PointsOpt = 5,
    output_format: Annotated[DiagnoseFormat, typer.Option("--format", "-f", help="table for people, json (htsr.diagnosis/1), csv (one row per comparison).")] = DiagnoseFormat.table,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Diagnose why a model fails from its loss-landscape features, with the MD tree (Zhou et al., ICML 2024).

    Three questions, each a small threshold tree: is the optimizer temperature
    (learning rate / batch size) too large or too small; is the model too small
    or the temperature the failure; is there too little data or is the
    temperature the failure. Each answer shows the path through the tree (every
    feature value and the threshold it was compared to) and the confidence the
    training population gives it. The shipped thresholds were fitted on the
    public Model Diagnosis Dataset (ResNet-18 on CIFAR-10); --fit refits them on
    your own population.

    [bold]Examples:[/bold]
      htsr diagnose --train-error 40.5 --mode-connectivity-peak -34.9 --hessian-t 5.3
      htsr diagnose --features features.json -f json -o diagnosis.json
      htsr diagnose seed0.pth seed1.pth --trust-pickle --data train.npz
      htsr diagnose seed0.pth seed1.pth --trust-pickle --data train.npz --max-batches 2 --max-iterations 5 --curve-steps 10
      htsr diagnose --fit my-population.csv -o my-tree.json
      htsr diagnose --fit my-population.csv --method cart --max-depth 4 -o my-cart.json
      htsr diagnose --features features.json --tree my-tree.json
    """
    flags = {"--train-error": train_error, "--mode-connectivity-peak": mode_connectivity_peak, "--hessian-t": hessian_t}
    if models:
        given = [name for name, value in {**flags, "--features": features_file, "--fit": fit}.items() if value is not None]
        if given:
            raise HtsrError(f"the features come from the two models; {given[0]} does not apply with MODEL_A MODEL_B")
    elif inputs.data is not None or inputs.text is not None:
        raise HtsrError("--data and --text are for computing the features of two models: give MODEL_A MODEL_B")
    if fit is not None:
        given = [name for name, value in {**flags, "--features": features_file, "--tree": tree_file}.items() if value is not None]
        if given:
            raise HtsrError(f"--fit writes a tree; it does not diagnose, so {given[0]} does not apply")
        if output_format is not DiagnoseFormat.table:
            raise HtsrError("--fit writes the tree as JSON; --format applies to diagnoses")
        check_output_paths({"--output": output}, [fit])
        if max_depth is not None and method is not FitMethod.cart:
            raise HtsrError("--max-depth applies only with --method cart")
        chosen = {"method": method.value if method else None, "max_depth": max_depth, "data_min_width": data_min_width}
        settings = FitSettings(**{name: value for name, value in chosen.items() if value is not None})
        shape = f"CART (Gini, depth <= {settings.max_depth})" if settings.method == "cart" else "MD tree thresholds"
        protocol = (
            f"htsr diagnose --fit: {shape} on every labelled row "
            f"(data vs temperature: width >= {settings.data_min_width})"
        )
        tree = fit_population(read_population(fit), settings, protocol)
        emit_text(dumps_json(tree.to_json()), output, quiet)
        return
    for flag, value in {"--method": method, "--max-depth": max_depth, "--data-min-width": data_min_width}.items():
        if value is not None:
            raise HtsrError(f"{flag} applies only with --fit")
    if models:
        if len(models) != 2:
            raise HtsrError(f"give two models (two seeds of one configuration: the MD tree needs their mode connectivity); got {len(models)}")
        check_output_paths({"--output": output}, [tree_file])
        tree = load_tree(tree_file) if tree_file is not None else None
        workload, where = inputs.load(models, {"--output": output})
        features = _computed_features(workload, where, inputs.seed, max_iterations, tolerance, curve_steps, curve_learning_rate, points, quiet)
    else:
        features = _features(features_file, flags)
        check_output_paths({"--output": output}, [features_file, tree_file])
        tree = load_tree(tree_file) if tree_file is not None else None
    diagnosis = diagnose_features(features, tree)
    if output_format is DiagnoseFormat.json:
        emit_text(dumps_json(diagnosis.to_json()), output, quiet)
    elif output_format is DiagnoseFormat.csv:
        emit_text(to_csv(PATH_COLUMNS, _path_rows(diagnosis)), output, quiet)
    else:
        emit_renderable(_table(diagnosis, table_width(output)), output, quiet)


def _computed_features(
    workload: Any, where: Any, seed: int, max_iterations: int, tolerance: float, curve_steps: int,
    curve_learning_rate: float, points: int, quiet: bool,
) -> dict[str, float]:
    """The MD tree's features of two seeds, as the landscape document computes them (the dataset's
    definitions: docs/algorithms.md, sections 12 and 13): only the Hessian trace and the Bezier curve."""
    from htsr_cli.landscape.connectivity import ConnectivitySettings
    from htsr_cli.landscape.hessian import HessianSettings
    from htsr_cli.landscape.measure import LandscapeSettings, measure

    settings = LandscapeSettings(
        metrics=("trace", "connectivity"),
        hessian=HessianSettings(max_iterations=max_iterations, tolerance=tolerance, seed=seed),
        connectivity=ConnectivitySettings(points=points, curve_steps=curve_steps, curve_learning_rate=curve_learning_rate, seed=seed),
    )
    with layer_progress(quiet, "diagnose", unit="steps") as progress:
        document = measure(workload.subjects, workload.objective, workload.batches, settings, workload.data, where.type, progress)
    computed = document["pair"]["md_tree_features"]
    if computed[HESSIAN_TRACE] is None:
        traces = ", ".join(f"{entry['hessian']['trace']:.4g}" for entry in document["models"])
        raise HtsrError(
            f"the Hessian trace estimates ({traces}) are not positive, so their logarithm (hessian_t) is undefined; "
            "raise --max-iterations or use more batches"
        )
    return {name: float(computed[name]) for name in (TRAIN_ERROR, CONNECTIVITY, HESSIAN_TRACE)}


def _features(path: Path | None, flags: dict[str, float | None]) -> dict[str, float]:
    """Feature values from --features (if given), then the flags (which win)."""
    given = {name: value for name, value in flags.items() if value is not None}
    if path is None and not given:
        raise HtsrError(
            "give the model's features: --features FILE.json, or --train-error, --mode-connectivity-peak "
            "and --hessian-t (or --fit TABLE.csv to fit a tree)"
        )
    features: dict[str, float] = {}
    if path is not None:
        data = parse_json(read_document(path), str(path))
        check_fields(data, {}, str(path))
        for name, value in data.items():
            number = _finite(value)
            if number is None:
                raise HtsrError(f"{path}: feature '{printable(name)}' must be a finite number, got {value!r:.60}")
            features[name] = number
    names = {"--train-error": TRAIN_ERROR, "--mode-connectivity-peak": CONNECTIVITY, "--hessian-t": HESSIAN_TRACE}
    for flag, value in given.items():
        if not math.isfinite(value):
            raise HtsrError(f"{flag} must be a finite number, got {value}")
        features[names[flag]] = value
    return features


def _finite(value: Any) -> float | None:
    """`value` as a float when it is a finite JSON number (an integer too large for a float is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _path_rows(diagnosis: Diagnosis) -> list[dict[str, Any]]:
    rows = []
    for question, answer in diagnosis.answers:
        for number, step in enumerate(answer.path, start=1):
            rows.append({
                "question": question.name, "diagnosis": answer.label, "confidence": answer.confidence,
                "support": answer.support, "step": number, "feature": step.feature, "value": step.value,
                "went": step.went, "threshold": step.threshold,
            })
    return rows


def _table(diagnosis: Diagnosis, width: int | None) -> Group:
    parts: list[Any] = []
    columns = [PATH_COLUMNS[4], PATH_COLUMNS[5], PATH_COLUMNS[6], PATH_COLUMNS[7], PATH_COLUMNS[8]]
    for question, answer in diagnosis.answers:
        confidence = (
            f"{answer.confidence:.0%} of {answer.support} training configurations on this leaf agree"
            if answer.confidence is not None else "no training configuration reached this leaf"
        )
        parts.append(Text(printable(question.asks), style="bold"))
        parts.append(Text(f"  {answer.label}: {question.meanings[answer.label]} ({confidence})"))
        # every column is the path's own: none is dropped, and a repeated `went` stays in its column
        parts.append(terminal_table(columns, _path_rows_of(question.name, diagnosis), width, name_key="feature",
                                    keep=[column.key for column in columns], fold_constants=False))
    source = diagnosis.tree.provenance
    parts.append(Text(printable(
        f"Tree: fitted on {source.table} ({source.rows} rows; {source.protocol}) on {source.fitted_on}, htsr {source.htsr_version}."
    )))
    return Group(*parts)


def _path_rows_of(name: str, diagnosis: Diagnosis) -> list[dict[str, Any]]:
    return [row for row in _path_rows(diagnosis) if row["question"] == name]
