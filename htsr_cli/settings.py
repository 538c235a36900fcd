"""Typed settings, created once at the edge (CLI or library call) and passed down."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from htsr_cli.errors import InvalidSetting

ProgressCallback = Callable[[int, int, str], None]
"""The callback every long-running library call accepts (`analyze`, `prune_checkpoint`,
`evaluate_perplexity`, writing plots or HTML): `progress(done, total, label)`, where
`label` names the item about to be worked on ("" once all `total` are done)."""

XMIN_METHODS: tuple[str, ...] = ("ks", "median", "peak")
# WeightWatcher 0.7.7's variants (docs/weightwatcher.md): its truncated power-law fits
# beside the power law, its finger clipping, and its small-N path for spectra of
# fewer than 20 eigenvalues. The first value of each is the default.
FITS: tuple[str, ...] = ("pl", "tpl", "e_tpl")
FIX_FINGERS: tuple[str, ...] = ("none", "clip_xmax")
SMALL_N_METHODS: tuple[str, ...] = ("htsr", "ww")
# The alpha band of a well-trained layer under each xmin rule (algorithms.md section 4):
# below it a layer is over-trained, above it under-trained. The rules fit different
# parts of the spectrum (median: the upper half, bulk included), so their alphas live
# on different scales. ks's band is WeightWatcher's; the others classify the same share
# of the layers of trained models (MiniLM, SmolLM2, a CNN) as ks's does (`make bench-gate`).
QUALITY_BANDS: dict[str, tuple[float, float]] = {"ks": (2.0, 6.0), "median": (1.6, 2.6), "peak": (1.7, 4.0)}
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
# The names of the precision modes (`--precision`); what each computes in is
# decided by spectra.solver.SolverPrecision alone.
PRECISIONS: tuple[str, ...] = ("mixed", "float64", "float32")

# Decimal units as disk and RAM vendors write them; binary ones as `free -h`, Docker and Slurm do.
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*((?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
MIN_MEMORY_BUDGET = 2**20


def parse_memory_size(text: str | int) -> int:
    """Bytes from `8GB`, `512MiB`, `16G`, `1.5e9`; an InvalidSetting of `max_memory` (one line) for anything else.

    KB/MB/GB/TB are powers of 1000; K/M/G/T and KiB/MiB/GiB/TiB powers of 1024.
    """
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise InvalidSetting("max_memory", text, "must be a size such as 8GB")
    if isinstance(text, int):
        number, unit = float(text), ""
    else:
        match = _SIZE.match(text)
        if match is None or match[2].lower() not in _SIZE_UNITS:
            raise InvalidSetting("max_memory", text, "not a size (examples: 8GB, 512MiB, 16G, 2000000000)")
        number, unit = float(match[1]), match[2].lower()
    size = number * _SIZE_UNITS[unit]
    if not math.isfinite(size) or size < MIN_MEMORY_BUDGET:
        hint = f"; a bare number is bytes: did you mean {number:g}GB?" if unit == "" and size > 0 else ""
        raise InvalidSetting("max_memory", text, f"must be at least 1MiB{hint}")
    return int(size)


# Beyond these, scaled eigenvalues leave the range float32/float64 resolve
# (1e-320 is subnormal) and FARMS windows degenerate to a single row or column.
CONV_SCALE_RANGE = (1e-6, 1e6)
FARMS_Q_RANGE = (1e-3, 1e3)


# The largest whole number a document htsr writes may hold (results.documents reads
# no larger): counts of parameters, eigenvalues and layers are far below it, and
# a setting above it would be written into a report htsr could not read back.
MAX_COUNT = 2**63 - 1


def require_int(value: object, parameter: str) -> None:
    """Counts are whole numbers: a library caller's 2.5 or NaN is refused, not compared."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidSetting(parameter, value, "must be a whole number")
    if abs(value) > MAX_COUNT:
        raise InvalidSetting(parameter, value, f"must be at most {MAX_COUNT:,} in size")


@dataclass(frozen=True)
class FarmsSettings:
    """Fixed-aspect-ratio matrix subsampling (algorithms.md section 5)."""

    window: int = 2000
    q: float = 1.0
    steps: int = 10

    def __post_init__(self) -> None:
        require_int(self.window, "window")
        require_int(self.steps, "steps")
        if self.window < 1:
            raise InvalidSetting("window", self.window, "must be at least 1")
        if not FARMS_Q_RANGE[0] <= self.q <= FARMS_Q_RANGE[1]:  # also refuses NaN and inf
            raise InvalidSetting(
                "q", self.q, f"must be a window aspect ratio in [{FARMS_Q_RANGE[0]:g}, {FARMS_Q_RANGE[1]:g}]"
            )
        if self.steps < 2:
            raise InvalidSetting("steps", self.steps, "must be at least 2 (windows per dimension)")


@dataclass(frozen=True)
class AnalyzeSettings:
    """Everything that changes the numbers `analyze` reports."""

    xmin: str = "ks"
    farms: FarmsSettings | None = None
    device: str = "auto"
    precision: str = "mixed"
    conv_scale: float = 1.0
    min_evals: int = 10
    layers: str | None = None  # regex on the module name or tensor key
    # Bytes a layer's solve may use (`--max-memory`, as bytes or text like "8GB");
    # None: the memory available when the analysis starts (free GPU memory on CUDA).
    max_memory: int | str | None = None
    # Solve two matrices at once on a CPU with 2+ cores when memory allows; the
    # numbers are identical either way, so this is not part of the report.
    concurrent_solves: bool = True
    # "tpl"/"e_tpl": also fit WeightWatcher's truncated power law (alpha_tpl, lambda_tpl, ...).
    fit: str = "pl"
    # "clip_xmax": WeightWatcher's finger clipping around the power-law fit, any xmin method.
    fix_fingers: str = "none"
    # "ww": spectra of fewer than 20 eigenvalues take WeightWatcher's small-N path (xmin=ks).
    small_n: str = "htsr"
    # WeightWatcher's random-matrix metrics (algorithms.md, "WeightWatcher's random-matrix metrics"):
    # the Marchenko-Pastur fit, the comparison with element-wise shuffled weights
    # (drawn from `seed`, so a run repeats exactly) and the detX condition.
    mp_fit: bool = False
    randomize: bool = False
    seed: int = 0
    detx: bool = False

    def __post_init__(self) -> None:
        for flag in ("mp_fit", "randomize", "detx"):
            if not isinstance(getattr(self, flag), bool):
                raise InvalidSetting(flag, getattr(self, flag), "must be True or False")
        require_int(self.seed, "seed")
        if not 0 <= self.seed < 2**63:
            raise InvalidSetting("seed", self.seed, "must be a whole number in [0, 2^63)")
        if self.xmin not in XMIN_METHODS:
            raise InvalidSetting("xmin", self.xmin, f"must be one of {', '.join(XMIN_METHODS)}")
        if self.fit not in FITS:
            raise InvalidSetting("fit", self.fit, f"must be one of {', '.join(FITS)}")
        if self.fix_fingers not in FIX_FINGERS:
            raise InvalidSetting("fix_fingers", self.fix_fingers, f"must be one of {', '.join(FIX_FINGERS)}")
        if self.small_n not in SMALL_N_METHODS:
            raise InvalidSetting("small_n", self.small_n, f"must be one of {', '.join(SMALL_N_METHODS)}")
        if self.small_n == "ww" and self.xmin != "ks":
            raise InvalidSetting(
                "small_n", self.small_n, f"WeightWatcher's small-N path chooses xmin its own way: use it with xmin=ks, not {self.xmin}"
            )
        if self.device not in DEVICES:
            raise InvalidSetting("device", self.device, f"must be one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise InvalidSetting("precision", self.precision, f"must be one of {', '.join(PRECISIONS)}")
        if not CONV_SCALE_RANGE[0] <= self.conv_scale <= CONV_SCALE_RANGE[1]:  # also refuses NaN and inf
            raise InvalidSetting(
                "conv_scale", self.conv_scale,
                f"must be in [{CONV_SCALE_RANGE[0]:g}, {CONV_SCALE_RANGE[1]:g}] (it multiplies conv eigenvalues; "
                "WeightWatcher's is 0.5)",
            )
        require_int(self.min_evals, "min_evals")
        if self.layers is not None and not isinstance(self.layers, str):
            raise InvalidSetting("layers", self.layers, "must be a regular expression (a string)")
        if self.min_evals < 2:
            raise InvalidSetting("min_evals", self.min_evals, "must be at least 2")
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", parse_memory_size(self.max_memory))
