"""htsr landscape: loss-landscape metrics of a model (or of two seeds) on data.

    htsr landscape model.pth --trust-pickle --data digits.npz
    htsr landscape seed0.pth seed1.pth --trust-pickle --data digits.npz --max-batches 4 -f json -o landscape.json
    htsr landscape ./gpt2 --text wiki.test.txt --seq-len 128 --max-batches 2 --metrics trace
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from htsr_cli.cli._landscape_options import (
    AscentStepsOpt,
    CurveLrOpt,
    CurveStepsOpt,
    InputOptions,
    MaxIterationsOpt,
    Norm,
    NormOpt,
    PointsOpt,
    RhoOpt,
    ToleranceOpt,
    input_options,
)
from htsr_cli.cli._options import OutputOpt, QuietOpt
from htsr_cli.cli._output import emit_renderable, emit_text, layer_progress, table_width


class LandscapeFormat(str, Enum):
    table = "table"
    json = "json"


class Kernel(str, Enum):
    linear = "linear"
    rbf = "rbf"


ModelsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="MODEL",
        help="One or two models: a Hugging Face directory or cached hub id (sequence/image classifier, causal LM), or a whole-model "
        "torch file (with --trust-pickle). Two models (two seeds of one configuration) add mode connectivity and CKA.",
        show_default=False,
    ),
]
MetricsOpt = Annotated[Optional[str], typer.Option("--metrics", help="Comma-separated: hessian, trace, density, sharpness; with two models also connectivity, cka, diversity.", show_default="hessian,trace,sharpness (+connectivity,cka for two models)")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Hessian eigenvalues of largest magnitude.")]
DensityStepsOpt = Annotated[int, typer.Option("--density-steps", help="Lanczos steps per SLQ run (density).")]
DensityRunsOpt = Annotated[int, typer.Option("--density-runs", help="SLQ runs (density).")]
KernelOpt = Annotated[Kernel, typer.Option("--kernel", help="CKA kernel.")]
FormatOpt = Annotated[LandscapeFormat, typer.Option("--format", "-f", help="Output format.")]


@input_options
def landscape(
    models: ModelsArg,
    inputs: InputOptions = InputOptions(),
    metrics: MetricsOpt = None,
    top_k: TopKOpt = 1,
    max_iterations: MaxIterationsOpt = 100,
    tolerance: ToleranceOpt = 1e-3,
    density_steps: DensityStepsOpt = 100,
    density_runs: DensityRunsOpt = 1,
    rho: RhoOpt = 0.5,
    norm: NormOpt = Norm.l2,
    ascent_steps: AscentStepsOpt = 20,
    curve_steps: CurveStepsOpt = 200,
    curve_learning_rate: CurveLrOpt = 0.01,
    points: PointsOpt = 5,
    kernel: KernelOpt = Kernel.linear,
    output_format: FormatOpt = LandscapeFormat.table,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Hessian top eigenvalues, trace and density (PyHessian), adaptive sharpness (SharpBalance); for two
    models also mode connectivity along a line and a trained Bezier curve, and CKA (MD tree's features).

    [bold]Examples:[/bold]
      htsr landscape model.pth --trust-pickle --data digits.npz
      htsr landscape seed0.pth seed1.pth --trust-pickle --data digits.npz --max-batches 4 -f json -o landscape.json
      htsr landscape ./gpt2 --text wiki.test.txt --seq-len 128 --max-batches 2 --metrics hessian,trace
    """
    from htsr_cli.errors import HtsrError
    from htsr_cli.landscape.connectivity import ConnectivitySettings
    from htsr_cli.landscape.hessian import HessianSettings
    from htsr_cli.landscape.measure import DEFAULT_PAIR, DEFAULT_SINGLE, LandscapeSettings, measure
    from htsr_cli.landscape.sharpness import SharpnessSettings
    from htsr_cli.landscape.similarity import SimilaritySettings
    from htsr_cli.results.documents import dumps_json

    if len(models) > 2:
        raise HtsrError(f"give one model, or two of one architecture; got {len(models)}")
    chosen = tuple(m.strip() for m in metrics.split(",") if m.strip()) if metrics is not None else (DEFAULT_PAIR if len(models) == 2 else DEFAULT_SINGLE)
    settings = LandscapeSettings(
        metrics=chosen,
        hessian=HessianSettings(
            top_k=top_k, max_iterations=max_iterations, tolerance=tolerance, density_steps=density_steps,
            density_runs=density_runs, seed=inputs.seed,
        ),
        sharpness=SharpnessSettings(rho=rho, norm=norm.value, ascent_steps=ascent_steps, seed=inputs.seed),
        connectivity=ConnectivitySettings(points=points, curve_steps=curve_steps, curve_learning_rate=curve_learning_rate, seed=inputs.seed),
        similarity=SimilaritySettings(kernel=kernel.value),
    )
    workload, where = inputs.load(models, {"-o": output})
    with layer_progress(quiet, "landscape", unit="steps") as progress:
        document = measure(workload.subjects, workload.objective, workload.batches, settings, workload.data, where.type, progress)
    if output_format is LandscapeFormat.json:
        emit_text(dumps_json(document), output, quiet)
        return
    emit_renderable(landscape_tables(document, table_width(output)), output, quiet)


def landscape_tables(document: dict, width: int | None):
    """One row per model; for two models a second table of what joins them."""
    from rich.console import Group
    from rich.text import Text

    from htsr_cli.render.outputs import Column
    from htsr_cli.render.terminal import terminal_table

    rows = []
    for entry in document["models"]:
        hessian = entry["hessian"] or {}
        tops = hessian.get("top_eigenvalues")
        rows.append({
            "model": entry["model"],
            "loss": entry["loss"],
            "error": entry["error"],
            "top": ", ".join(f"{value:.4g}" for value in tops) if tops else None,
            "trace": hessian.get("trace"),
            "sharpness": entry["sharpness"],
        })
    columns = [
        Column("model", "model", justify="left"),
        Column("loss", "loss", 4),
        Column("error", "error %", 2),
        Column("top", "top eigenvalues", justify="left"),
        Column("trace", "trace", 4),
        Column("sharpness", "sharpness", 4),
    ]
    data = document["data"]
    caption = (
        f"{document['objective']} on {data['used']} of {data['samples']} {data['unit']} of {data['path']} "
        f"({data['batches']} batch{'es' if data['batches'] != 1 else ''}); {document['device']}"
    )
    parts = [terminal_table(columns, rows, width, notes=[caption], name_key="model", keep=("model", "loss", "error"))]
    pair = document["pair"]
    if pair is not None:
        connectivity = pair["connectivity"]
        paired = []
        if connectivity is not None:
            for name in ("line", "bezier"):
                path = connectivity[name]
                paired.append({
                    "path": name,
                    "errors": " ".join(f"{e:.1f}" for e in path["error"]),
                    "loss_barrier": path["loss_barrier"],
                    "error_barrier": path["error_barrier"],
                    "mc": path["mode_connectivity"],
                    "peak": path["mode_connectivity_peak"],
                })
        pair_columns = [
            Column("path", "path", justify="left"),
            Column("errors", "error % along t", justify="left"),
            Column("loss_barrier", "loss barrier", 4),
            Column("error_barrier", "error barrier", 2),
            Column("mc", "mode_connectivity", 3),
            Column("peak", "mode_connectivity_peak", 3),
        ]
        notes = [f"CKA ({document['settings']['similarity']['kernel']}) {pair['cka']:.4f}" if pair["cka"] is not None else ""]
        if pair["diversity"] is not None:
            diversity = pair["diversity"]
            notes.append(f"disagreement {diversity['disagreement']:.4f}, KL {diversity['kl']:.4f}, variance {diversity['variance']:.4g}")
        if paired:
            parts.append(terminal_table(pair_columns, paired, width, notes=["; ".join(n for n in notes if n)] if any(notes) else [],
                                        name_key="path", keep=("path", "loss_barrier", "error_barrier"), fold_constants=False))
        elif any(notes):
            parts.append(Text("; ".join(n for n in notes if n)))
    return Group(*parts)
