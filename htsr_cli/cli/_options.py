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


class Precision(str, Enum):
    mixed = "mixed"
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
PrecisionOpt = Annotated[Precision, typer.Option("--precision", help="mixed: float32 Gram, float64 eigensolver (alpha within 1e-3 of float64); float64: all float64; float32: float32 eigensolver, redone in float64 per layer when not accurate enough.")]
MaxMemoryOpt = Annotated[Optional[str], typer.Option("--max-memory", help="Memory one layer's solve may use (8GB, 512MiB, 16G); layers needing more are skipped. Default: the memory available.", show_default=False)]
MinEvalsOpt = Annotated[int, typer.Option("--min-evals", help="Skip layers with fewer eigenvalues than this.")]
ConvScaleOpt = Annotated[float, typer.Option("--conv-scale", help="Multiply conv eigenvalues (0.5 reproduces WeightWatcher's numbers).")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the result to this file (atomically) instead of stdout.", dir_okay=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]

XminOpt = Annotated[Xmin, typer.Option("--xmin", help="How the power-law tail start xmin is chosen (algorithms: ks = WeightWatcher, median = TempBalance, peak = AlphaPruning).")]
