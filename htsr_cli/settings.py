"""Typed settings, created once at the edge (CLI or library call) and passed down."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from htsr_cli.errors import InvalidSetting

XminMethod = Literal["ks", "median", "peak"]
XMIN_METHODS: tuple[str, ...] = ("ks", "median", "peak")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("float64", "float32")


@dataclass(frozen=True)
class FarmsSettings:
    """Fixed-aspect-ratio matrix subsampling (algorithms.md section 5)."""

    window: int = 2000
    q: float = 1.0
    steps: int = 10

    def __post_init__(self) -> None:
        if self.window < 1:
            raise InvalidSetting("window", self.window, "must be at least 1")
        if not self.q > 0:
            raise InvalidSetting("q", self.q, "must be positive")
        if self.steps < 2:
            raise InvalidSetting("steps", self.steps, "must be at least 2 (windows per dimension)")


@dataclass(frozen=True)
class AnalyzeSettings:
    """Everything that changes the numbers `analyze` reports."""

    xmin: str = "ks"
    farms: FarmsSettings | None = None
    device: str = "auto"
    precision: str = "float64"
    conv_scale: float = 1.0
    min_evals: int = 10
    layers: str | None = None  # regex on the module name or tensor key

    def __post_init__(self) -> None:
        if self.xmin not in XMIN_METHODS:
            raise InvalidSetting("xmin", self.xmin, f"must be one of {', '.join(XMIN_METHODS)}")
        if self.device not in DEVICES:
            raise InvalidSetting("device", self.device, f"must be one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise InvalidSetting("precision", self.precision, f"must be one of {', '.join(PRECISIONS)}")
        if not self.conv_scale > 0:
            raise InvalidSetting("conv_scale", self.conv_scale, "must be positive")
        if self.min_evals < 2:
            raise InvalidSetting("min_evals", self.min_evals, "must be at least 2")

    def to_json(self, device_used: str, xmin_candidates: str) -> dict:
        """The `settings` object of the htsr.report/1 JSON."""
        return {
            "xmin": self.xmin,
            "xmin_candidates": xmin_candidates,
            "farms": asdict(self.farms) if self.farms else None,
            "device": device_used,
            "precision": self.precision,
            "conv_scale": self.conv_scale,
            "min_evals": self.min_evals,
            "layers": self.layers,
        }
