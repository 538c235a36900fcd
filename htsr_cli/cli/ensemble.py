"""htsr ensemble: the sharpness-diversity picture of an ensemble (SharpBalance, Lu et al. 2024)
(examples in the command's help)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Group

from htsr_cli.cli._landscape_options import (
    AscentStepsOpt,
    InputOptions,
    Norm,
    NormOpt,
    RhoOpt,
    input_options,
)
from htsr_cli.cli._options import DEFAULT_DPI, PLOT_SUFFIXES, DpiOpt, OutputOpt, QuietOpt
from htsr_cli.cli._output import emit_renderable, emit_text, layer_progress, table_width, wrote
from htsr_cli.errors import HtsrError


class EnsembleFormat(str, Enum):
    table = "table"
    json = "json"


@input_options
def ensemble(
    models: Annotated[list[str], typer.Argument(
        metavar="MODEL",
        help="Two or more members: whole-model torch files (with --trust-pickle) or Hugging Face directories, all of one kind.",
        show_default=False,
    )],
    inputs: InputOptions = InputOptions(),
    rho: RhoOpt = 0.5,
    norm: NormOpt = Norm.l2,
    ascent_steps: AscentStepsOpt = 20,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw each member's sharpness against its disagreement with the others (.png, .svg or .pdf).", dir_okay=False, show_default="no plot")] = None,
    dpi: DpiOpt = DEFAULT_DPI,
    output_format: Annotated[EnsembleFormat, typer.Option("--format", "-f", help="table for people, json (htsr.ensemble/1).")] = EnsembleFormat.table,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Each member's adaptive worst-case sharpness, the members' pairwise diversity (disagreement, KL,
    prediction variance), member and ensemble accuracy and loss: the sharpness-diversity trade-off of
    SharpBalance (Lu et al. 2024).

    [bold]Examples:[/bold]
      htsr ensemble m0.pth m1.pth m2.pth --trust-pickle --data test.npz
      htsr ensemble m0.pth m1.pth m2.pth --trust-pickle --data test.npz --plot sharpness-diversity.png -f json -o ensemble.json
      htsr ensemble m0.pth m1.pth --trust-pickle --data test.npz --max-batches 2 --ascent-steps 2
    """
    from htsr_cli.landscape.ensemble import measure_ensemble
    from htsr_cli.landscape.sharpness import SharpnessSettings
    from htsr_cli.results.documents import dumps_json

    if len(models) < 2:
        raise HtsrError(f"an ensemble needs at least two models; got {len(models)}")
    if plot is not None and plot.suffix.lower() not in PLOT_SUFFIXES:
        raise HtsrError(f"--plot {plot}: the file name must end in .png, .svg or .pdf")
    sharpness = SharpnessSettings(rho=rho, norm=norm.value, ascent_steps=ascent_steps, seed=inputs.seed)
    workload, where = inputs.load(models, {"-o": output, "--plot": plot})
    with layer_progress(quiet, "ensemble", unit="batches") as progress:
        document = measure_ensemble(workload.subjects, workload.objective, workload.batches, sharpness, workload.data, where.type, progress)
    if output_format is EnsembleFormat.json:
        emit_text(dumps_json(document), output, quiet)
    else:
        emit_renderable(ensemble_tables(document, table_width(output)), output, quiet)
    if plot is not None:
        from htsr_cli.io import write_atomic
        from htsr_cli.render.ensemble import sharpness_diversity_figure
        from htsr_cli.render.plots import figure_bytes, missing_glyphs

        with missing_glyphs():
            write_atomic(plot, figure_bytes(sharpness_diversity_figure(document), PLOT_SUFFIXES[plot.suffix.lower()], dpi))
        wrote(plot, quiet)


def ensemble_tables(document: dict[str, Any], width: int | None) -> Group:
    """One row per member and one for the ensemble; the diversity in the note under it."""
    from htsr_cli.render.outputs import Column
    from htsr_cli.render.terminal import terminal_table

    rows = [
        {key: member[key] for key in ("model", "accuracy", "loss", "sharpness", "disagreement")}
        for member in document["members"]
    ]
    ensemble, diversity, data = document["ensemble"], document["diversity"], document["data"]
    rows.append({"model": "ensemble (mean prediction)", "accuracy": ensemble["accuracy"], "loss": ensemble["loss"],
                 "sharpness": ensemble["mean_sharpness"], "disagreement": diversity["disagreement"]})
    columns = [
        Column("model", "model", justify="left"),
        Column("accuracy", "accuracy %", 2),
        Column("loss", "loss", 4),
        Column("sharpness", "sharpness", 4),
        Column("disagreement", "disagreement", 4),
    ]
    rho, norm = document["settings"]["sharpness"]["rho"], document["settings"]["sharpness"]["norm"]
    caption = (
        f"{document['objective']} on {data['used']} of {data['samples']} {data['unit']} of {data['path']}; "
        f"sharpness: adaptive, rho {rho:g}, l{norm} (ensemble row: the members' mean); "
        f"disagreement: with the other members (ensemble row: mean over pairs); "
        f"KL {diversity['kl']:.4f}, prediction variance {diversity['variance']:.4g}; {document['device']}"
    )
    return terminal_table(columns, rows, width, notes=[caption], name_key="model", keep=("model", "accuracy"))
