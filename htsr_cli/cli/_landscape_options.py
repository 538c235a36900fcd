"""What `htsr landscape`, `htsr diagnose MODEL_A MODEL_B` and `htsr ensemble` share: the options that
load models and data (one group, `@input_options`, built into one `InputOptions`), and the ones that
bound the heavy work (commands must not import each other)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from htsr_cli.cli._analysis_options import option_group
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


@dataclass(frozen=True)
class InputOptions:
    """The models' inputs as the command line gave them: data or text, how it is batched, where the
    models run, the seed of every random draw, and whether whole-model torch files may be unpickled."""

    data: Path | None = None
    text: Path | None = None
    label_column: str = "label"
    batch_size: int = 32
    max_batches: int | None = None
    seq_len: int = 128
    seed: int = 0
    trust_pickle: bool = False
    device: str = "auto"

    def load(self, models: list[str], written: dict[str, Path | None]) -> tuple[Workload, torch.device]:
        """The models and batches to measure, on the chosen device; `written` (the output options) must
        not overwrite the data. Torch is imported here, not when the command module loads."""
        from htsr_cli.io import check_output_paths
        from htsr_cli.lm.landscape_inputs import InputSettings, prepare
        from htsr_cli.spectra.solver import resolve_device

        inputs = InputSettings(
            self.data, self.text, self.label_column, self.batch_size, self.seq_len, self.max_batches, self.trust_pickle
        )
        check_output_paths(written, [path for path in (self.data, self.text) if path is not None])
        where = resolve_device(self.device)
        return prepare(list(models), inputs, where), where


def _input_option_defaults(defaults: InputOptions) -> dict[str, tuple[Any, Any]]:
    """Each option's parameter name -> (annotation, default), in the order `--help` lists them."""
    return {
        "data": (DataOpt, defaults.data),
        "text": (TextOpt, defaults.text),
        "label_column": (LabelOpt, defaults.label_column),
        "batch_size": (BatchSizeOpt, defaults.batch_size),
        "max_batches": (MaxBatchesOpt, defaults.max_batches),
        "seq_len": (SeqLenOpt, defaults.seq_len),
        "seed": (SeedOpt, defaults.seed),
        "trust_pickle": (TrustPickleOpt, defaults.trust_pickle),
        "device": (RunDeviceOpt, Device(defaults.device)),
    }


def _inputs_from_options(defaults: InputOptions, values: dict[str, Any]) -> InputOptions:
    return InputOptions(**{**values, "device": values["device"].value})


# Give a command the shared input options, in place of its one parameter whose default is an `InputOptions`.
input_options = option_group(InputOptions, _input_option_defaults, _inputs_from_options)
