"""Options shared by several commands, declared once as `Annotated` aliases."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


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
    float64 = "float64"
    float32 = "float32"


CheckpointArg = Annotated[
    str,
    typer.Argument(
        help="A .safetensors/.pt/.pth/.bin/.ckpt file, a Hugging Face directory, or a cached hub id.",
        show_default=False,
    ),
]
FarmsOpt = Annotated[bool, typer.Option("--farms", help="Also fit alpha with FARMS (fixed-aspect-ratio subsampling).")]
FarmsWindowOpt = Annotated[int, typer.Option("--farms-window", help="FARMS window size (clamped to each matrix's short side).")]
FarmsQOpt = Annotated[float, typer.Option("--farms-q", help="FARMS window aspect ratio Q (cols / rows).")]
FarmsStepsOpt = Annotated[int, typer.Option("--farms-steps", help="FARMS windows per dimension.")]
LayersOpt = Annotated[Optional[str], typer.Option("--layers", help="Regex on module name or tensor key; only matching matrices are analysed.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where eigenvalues are computed.")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", help="Solver precision; float32 is faster and labelled in the output.")]
MinEvalsOpt = Annotated[int, typer.Option("--min-evals", help="Skip layers with fewer eigenvalues than this.")]
ConvScaleOpt = Annotated[float, typer.Option("--conv-scale", help="Multiply conv eigenvalues (0.5 reproduces WeightWatcher's numbers).")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the result to this file (atomically) instead of stdout.", dir_okay=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]

XminOpt = Annotated[Xmin, typer.Option("--xmin", help="How the power-law tail start xmin is chosen (algorithms: ks = WeightWatcher, median = TempBalance, peak = AlphaPruning).")]

# AlphaPruning's allocation (`htsr allocate sparsity`, `htsr prune`).
MetricFarmsOpt = Annotated[bool, typer.Option("--farms", help="Use alpha_farms (FARMS) instead of alpha.")]
EpsilonOpt = Annotated[float, typer.Option("--epsilon", help="Spread of the sparsities around the target, in [0, 1).")]
GranularityOpt = Annotated[
    Granularity, typer.Option("--granularity", help="One sparsity per block (its mean alpha) or per matrix.")
]
NoClipOpt = Annotated[bool, typer.Option("--no-clip", help="Do not cap sparsities at 0.99 (the reference output).")]
