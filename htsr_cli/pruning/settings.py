"""Typed settings of `htsr prune`, made once at the edge and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from htsr_cli.errors import HtsrError
from htsr_cli.settings import DEVICES, AnalyzeSettings

ALLOCATIONS = ("alphapruning", "uniform", "owl")
METHODS = ("magnitude", "wanda")
# OWL's published LLaMA-7B run (its run script; the argparse default of M is 3).
OWL_M = 5.0
OWL_LAMBDA = 0.08


@dataclass(frozen=True)
class CalibrationSettings:
    """Where Wanda and OWL get input activations: `samples` windows of `seq_len` tokens of `text`."""

    text: Path
    samples: int = 128
    seq_len: int = 512

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise HtsrError(f"--samples must be at least 1, got {self.samples}")
        if self.seq_len < 2:
            raise HtsrError(f"--seq-len must be at least 2 tokens, got {self.seq_len}")


@dataclass(frozen=True)
class OwlSettings:
    """Outlier-weighted layerwise sparsity: outliers are scores above `m` times the block mean;
    block sparsities spread over a range of width 2 * `lam` around the target."""

    m: float = OWL_M
    lam: float = OWL_LAMBDA

    def __post_init__(self) -> None:
        if not self.m > 0:
            raise HtsrError(f"--owl-m must be positive, got {self.m}")
        if not 0 <= self.lam < 0.5:
            raise HtsrError(f"--owl-lambda must be in [0, 0.5), got {self.lam}")


@dataclass(frozen=True)
class PruneSettings:
    """Everything that decides which weights `htsr prune` zeroes.

    `allocation` is one of ALLOCATIONS or the path of a saved `htsr.sparsity/1`
    file; with a file, `target` may be None (the file's weighted mean is the target).
    `epsilon`, `granularity`, `clip` and `analysis` shape the AlphaPruning allocation
    (as in `htsr allocate sparsity`); `owl` the OWL one.
    """

    target: float | None
    allocation: str = "alphapruning"
    method: str = "magnitude"
    epsilon: float = 0.3
    granularity: str = "block"
    clip: bool = True
    analysis: AnalyzeSettings = field(default_factory=lambda: AnalyzeSettings(xmin="peak"))
    owl: OwlSettings = field(default_factory=OwlSettings)
    calibration: CalibrationSettings | None = None
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise HtsrError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.device not in DEVICES:
            raise HtsrError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.target is None:
            if self.plan_file is None:
                raise HtsrError(f"--target is required with --allocation {self.allocation}")
        elif not 0.0 < self.target < 1.0:
            raise HtsrError(f"--target must be a sparsity strictly between 0 and 1, got {self.target}")
        if self.calibration is None and self.needs_calibration:
            needs = "--method wanda" if self.method == "wanda" else "--allocation owl"
            raise HtsrError(f"{needs} needs --calibration TEXT_FILE (text to collect input activations on)")

    @property
    def plan_file(self) -> Path | None:
        """The saved allocation to apply, when `allocation` is not one of ALLOCATIONS."""
        return None if self.allocation in ALLOCATIONS else Path(self.allocation)

    @property
    def needs_calibration(self) -> bool:
        return self.method == "wanda" or self.allocation == "owl"

    @property
    def metric(self) -> str:
        return "alpha_farms" if self.analysis.farms is not None else "alpha"
