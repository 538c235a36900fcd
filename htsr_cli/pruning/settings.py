"""Typed settings of `htsr prune`, made once at the edge and passed down."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from htsr_cli.allocations.sparsity import SparsitySettings
from htsr_cli.errors import InvalidSetting
from htsr_cli.settings import AnalyzeSettings, require_int

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
        require_int(self.samples, "samples")
        require_int(self.seq_len, "seq_len")
        if self.samples < 1:
            raise InvalidSetting("samples", self.samples, "must be at least 1")
        if self.seq_len < 2:
            raise InvalidSetting("seq_len", self.seq_len, "must be at least 2 tokens")


@dataclass(frozen=True)
class OwlSettings:
    """Outlier-weighted layerwise sparsity: outliers are scores above `m` times the block mean;
    block sparsities spread over a range of width 2 * `lam` around the target."""

    m: float = OWL_M
    lam: float = OWL_LAMBDA

    def __post_init__(self) -> None:
        if not self.m > 0:  # also refuses NaN
            raise InvalidSetting("m", self.m, "must be positive")
        if not 0 <= self.lam < 0.5:
            raise InvalidSetting("lam", self.lam, "must be in [0, 0.5)")


@dataclass(frozen=True, init=False)
class PruneSettings:
    """Everything that decides which weights `htsr prune` zeroes.

    `allocation` is one of ALLOCATIONS or the path of a saved `htsr.sparsity/1`
    file; with a file, `target` may be None (the file's weighted mean is the target).
    `sparsity` is the AlphaPruning allocation, exactly as `htsr allocate sparsity`
    takes it (None with any other allocation), fitted on `analysis`; `owl` shapes
    the OWL allocation. `analysis.device` is where everything runs: the analysis,
    the masks and the model (wanda, owl).

    The constructor takes the AlphaPruning settings one by one
    (`PruneSettings(target=0.7, epsilon=0.2, device="cuda")`) and builds the
    `SparsitySettings` from them; `device`, when given, replaces `analysis.device`.
    """

    target: float | None
    allocation: str
    method: str
    sparsity: SparsitySettings | None
    analysis: AnalyzeSettings
    owl: OwlSettings
    calibration: CalibrationSettings | None
    overwrite: bool
    include_ends: bool  # the first and last weight layers (stem, head) are pruned too

    def __init__(
        self,
        target: float | None,
        allocation: str = "alphapruning",
        method: str = "magnitude",
        epsilon: float = 0.3,
        granularity: str = "block",
        clip: bool = True,
        analysis: AnalyzeSettings = AnalyzeSettings(xmin="peak"),
        owl: OwlSettings = OwlSettings(),
        calibration: CalibrationSettings | None = None,
        device: str | None = None,
        overwrite: bool = False,
        include_ends: bool = False,
    ) -> None:
        if method not in METHODS:
            raise InvalidSetting("method", method, f"must be one of {', '.join(METHODS)}")
        if device is not None:
            analysis = replace(analysis, device=device)  # AnalyzeSettings checks the device
        fields = {"target": target, "allocation": allocation, "method": method, "analysis": analysis, "owl": owl,
                  "calibration": calibration, "overwrite": overwrite, "sparsity": None,
                  "include_ends": include_ends}
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        if target is None:
            if self.plan_file is None:
                raise InvalidSetting(
                    "target", None, f"is required with the {allocation} allocation (only an allocation file may leave it out)"
                )
        elif not 0.0 < target < 1.0:  # also refuses NaN
            raise InvalidSetting("target", target, "must be a sparsity strictly between 0 and 1")
        if calibration is None and self.needs_calibration:
            needs = "the wanda method" if method == "wanda" else "the owl allocation"
            raise InvalidSetting("calibration", None, f"is required with {needs} (a text file to collect input activations on)")
        if allocation == "alphapruning":
            metric = "alpha_farms" if analysis.farms is not None else "alpha"
            sparsity = SparsitySettings(target, epsilon, granularity, clip, metric, include_ends)  # type: ignore[arg-type]
            object.__setattr__(self, "sparsity", sparsity)

    @property
    def device(self) -> str:
        return self.analysis.device

    @property
    def plan_file(self) -> Path | None:
        """The saved allocation to apply, when `allocation` is not one of ALLOCATIONS."""
        return None if self.allocation in ALLOCATIONS else Path(self.allocation)

    @property
    def needs_calibration(self) -> bool:
        return self.method == "wanda" or self.allocation == "owl"
