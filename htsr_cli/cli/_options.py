"""Options shared by several commands, declared once as `Annotated` aliases,
and the command class that renders every command's help the same way."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from htsr_cli.errors import InvalidSetting


class Xmin(str, Enum):
    ks = "ks"
    median = "median"
    peak = "peak"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Granularity(str, Enum):
    block = "block"
    matrix = "matrix"


class Precision(str, Enum):
    mixed = "mixed"
    float64 = "float64"
    float32 = "float32"


class Metric(str, Enum):
    alpha = "alpha"
    alpha_farms = "alpha_farms"


class PlotFormat(str, Enum):
    png = "png"
    svg = "svg"
    pdf = "pdf"


class FlagsWithoutType:
    """Help lists flags without a `<bool>` type: they take no value."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params


class HtsrCommand(FlagsWithoutType, TyperCommand):
    """Every htsr command."""


class HtsrGroup(FlagsWithoutType, TyperGroup):
    """Every htsr command group (allocate, lr-schedule)."""


CheckpointArg = Annotated[
    str,
    typer.Argument(
        metavar="CHECKPOINT",
        help="A .safetensors/.pt/.pth/.bin/.ckpt file, a Hugging Face directory, or a cached hub id.",
        show_default=False,
    ),
]
CheckpointOrReportArg = Annotated[
    str,
    typer.Argument(
        metavar="CHECKPOINT|REPORT.json",
        help="A checkpoint (analyzed now, with the analysis options) or an htsr.report/1 JSON saved by `htsr analyze -f json`.",
        show_default=False,
    ),
]
FarmsOpt = Annotated[bool, typer.Option("--farms", help="Also compute alpha_farms (FARMS: fixed-aspect-ratio subsampling).")]
FarmsWindowOpt = Annotated[int, typer.Option("--farms-window", help="FARMS window size (clamped to each matrix's short side).")]
FarmsQOpt = Annotated[float, typer.Option("--farms-q", help="FARMS window aspect ratio Q (cols / rows).")]
FarmsStepsOpt = Annotated[int, typer.Option("--farms-steps", help="FARMS windows per dimension.")]
LayersOpt = Annotated[Optional[str], typer.Option("--layers", help="Regex on module name or tensor key; only matching matrices are analyzed.", show_default="all")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where eigenvalues are computed (auto: CUDA when there is one).")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", help="mixed: float32 Gram, float64 eigensolver (alpha within 1e-3 of float64); float64: all float64; float32: float32 eigensolver, redone in float64 per layer when not accurate enough.")]
MaxMemoryOpt = Annotated[Optional[str], typer.Option("--max-memory", help="Memory one layer's solve may use (8GB, 512MiB, 16G); layers needing more are skipped.", show_default="the memory available")]
MinEvalsOpt = Annotated[int, typer.Option("--min-evals", help="Skip layers with fewer eigenvalues than this.")]
ConvScaleOpt = Annotated[float, typer.Option("--conv-scale", help="Multiply conv eigenvalues (0.5 reproduces WeightWatcher's numbers).")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the result to this file (atomically) instead of stdout.", dir_okay=False, show_default="stdout")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no `wrote FILE` line.")]
MetricOpt = Annotated[Metric, typer.Option("--metric", help="Which alpha to use (alpha_farms needs --farms, or a report analyzed with it).")]
XminOpt = Annotated[Xmin, typer.Option("--xmin", help="How the power-law tail start xmin is chosen (algorithms: ks = WeightWatcher, median = TempBalance, peak = AlphaPruning).")]
PlotFormatOpt = Annotated[PlotFormat, typer.Option("--plot-format", help="Image format of the plot files.")]
DpiOpt = Annotated[int, typer.Option("--dpi", help="Resolution of raster plots (png), in dots per inch.", min=10, max=1200)]

DEFAULT_DPI = 150  # plots.DEFAULT_DPI, here too so the CLI starts without matplotlib (a test keeps them equal)

# Settings whose command-line flag is not just the parameter name with dashes.
FLAGS = {"window": "--farms-window", "q": "--farms-q", "steps": "--farms-steps"}


def as_flag(error: InvalidSetting) -> str:
    """An invalid setting as the command line names it: `--min-evals 1: must be at least 2`."""
    flag = FLAGS.get(error.parameter, "--" + error.parameter.replace("_", "-"))
    return f"{flag} {error.value}: {error.problem}"

# AlphaPruning's allocation (`htsr allocate sparsity`, `htsr prune`).
EpsilonOpt = Annotated[float, typer.Option("--epsilon", help="Spread of the sparsities around the target, in [0, 1).")]
GranularityOpt = Annotated[
    Granularity, typer.Option("--granularity", help="One sparsity per block (its mean alpha) or per matrix.")
]
NoClipOpt = Annotated[bool, typer.Option("--no-clip", help="Do not cap sparsities at 0.99 (the reference output).")]
