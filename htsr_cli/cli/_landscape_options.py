"""What `htsr landscape`, `htsr diagnose MODEL_A MODEL_B` and `htsr ensemble` share: the options that
load models and data, and the ones that bound the heavy work (commands must not import each other)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from htsr_cli.cli._options import Device

if TYPE_CHECKING:
    import torch

    from htsr_cli.lm.landscape_inputs import Workload


class Norm(str, Enum):
    l2 = "2"
    linf = "inf"


DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Labelled samples for a classifier: .npz, .csv, .jsonl or a datasets.save_to_disk directory.", show_default="none: --data or --text is needed")]
TextOpt = Annotated[Optional[Path], typer.Option("--text", dir_okay=False, help="UTF-8 text for a causal LM, cut into windows of --seq-len tokens.", show_default="none: --data or --text is needed")]
LabelOpt = Annotated[str, typer.Option("--label-column", help="The label column/key of --data.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Samples (or text windows) per batch.")]
MaxBatchesOpt = Annotated[Optional[int], typer.Option("--max-batches", help="Use only the first N batches (a dry run takes seconds).", show_default="all")]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="Tokens per window (causal LM) or per text (sequence classifier).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every random probe, start and curve sample.")]
MaxIterationsOpt = Annotated[int, typer.Option("--max-iterations", help="Cap on power iterations per eigenvalue and on trace probes.")]
ToleranceOpt = Annotated[float, typer.Option("--tolerance", help="Relative change that stops power iteration and the trace estimate.")]
RhoOpt = Annotated[float, typer.Option("--rho", help="Radius of the adaptive sharpness ball.")]
NormOpt = Annotated[Norm, typer.Option("--norm", help="Norm of the sharpness ball.")]
AscentStepsOpt = Annotated[int, typer.Option("--ascent-steps", help="Gradient-ascent steps per batch (sharpness).")]
CurveStepsOpt = Annotated[int, typer.Option("--curve-steps", help="SGD steps training the Bezier curve's middle point (0: the midpoint).")]
CurveLrOpt = Annotated[float, typer.Option("--curve-learning-rate", help="SGD learning rate of the Bezier middle point.")]
PointsOpt = Annotated[int, typer.Option("--points", help="Points along each path, ends included (the MD tree dataset uses 5).")]
TrustPickleOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow loading whole-model torch files (unpickling can run code).")]
RunDeviceOpt = Annotated[Device, typer.Option("--device", help="Where the models run.")]


def load_workload(
    models: list[str],
    data: Path | None,
    text: Path | None,
    label_column: str,
    batch_size: int,
    seq_len: int,
    max_batches: int | None,
    trust_pickle: bool,
    device: Device,
    written: dict[str, Path | None],
) -> tuple[Workload, torch.device]:
    """The models and batches to measure, on the chosen device; `written` (the output options) must not
    overwrite the data. Torch is imported here, not when the command module loads."""
    from htsr_cli.io import check_output_paths
    from htsr_cli.lm.landscape_inputs import InputSettings, prepare
    from htsr_cli.spectra.solver import resolve_device

    inputs = InputSettings(data, text, label_column, batch_size, seq_len, max_batches, trust_pickle)
    check_output_paths(written, [path for path in (data, text) if path is not None])
    where = resolve_device(device.value)
    return prepare(list(models), inputs, where), where
