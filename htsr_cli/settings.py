"""Typed settings, created once at the edge (CLI or library call) and passed down."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from htsr_cli.errors import HtsrError

XminMethod = Literal["ks", "median", "peak"]
XMIN_METHODS: tuple[str, ...] = ("ks", "median", "peak")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("float64", "float32")


# Beyond these, scaled eigenvalues leave the range float32/float64 resolve
# (1e-320 is subnormal) and FARMS windows degenerate to a single row or column.
CONV_SCALE_RANGE = (1e-6, 1e6)
FARMS_Q_RANGE = (1e-3, 1e3)


def require_int(value: object, name: str) -> None:
    """Counts are whole numbers: a library caller's 2.5 or NaN is refused, not compared."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise HtsrError(f"{name} must be a whole number, got {value!r}")


@dataclass(frozen=True)
class FarmsSettings:
    """Fixed-aspect-ratio matrix subsampling (algorithms.md section 5)."""

    window: int = 2000
    q: float = 1.0
    steps: int = 10

    def __post_init__(self) -> None:
        require_int(self.window, "--farms-window")
        require_int(self.steps, "--farms-steps")
        if self.window < 1:
            raise HtsrError(f"--farms-window must be at least 1, got {self.window}")
        if not FARMS_Q_RANGE[0] <= self.q <= FARMS_Q_RANGE[1]:  # also refuses NaN and inf
            raise HtsrError(
                f"--farms-q must be a window aspect ratio in [{FARMS_Q_RANGE[0]:g}, {FARMS_Q_RANGE[1]:g}], got {self.q}"
            )
        if self.steps < 2:
            raise HtsrError(
                f"--farms-steps must be at least 2 (windows per dimension), got {self.steps}"
            )


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
            raise HtsrError(f"--xmin must be one of {', '.join(XMIN_METHODS)}, got {self.xmin!r}")
        if self.device not in DEVICES:
            raise HtsrError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise HtsrError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if not CONV_SCALE_RANGE[0] <= self.conv_scale <= CONV_SCALE_RANGE[1]:  # also refuses NaN and inf
            raise HtsrError(
                f"--conv-scale must be in [{CONV_SCALE_RANGE[0]:g}, {CONV_SCALE_RANGE[1]:g}], got {self.conv_scale} "
                "(it multiplies conv eigenvalues; WeightWatcher's is 0.5)"
            )
        require_int(self.min_evals, "--min-evals")
        if self.layers is not None and not isinstance(self.layers, str):
            raise HtsrError(f"--layers must be a regular expression (a string), got {self.layers!r}")
        if self.min_evals < 2:
            raise HtsrError(f"--min-evals must be at least 2, got {self.min_evals}")

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
