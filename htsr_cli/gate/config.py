"""The gate's rules as typed settings: read from `[tool.htsr.gate]`, overridden by flags.

    [tool.htsr.gate]
    metric = "alpha"          # or "alpha_farms" (needs a report analysed with --farms)
    max_alpha_drift = 0.5     # per layer, against --baseline (0.5 whenever --baseline is given)
    alpha_min = 2.0
    alpha_max = 6.0
    max_flagged = 0.1         # at most 10% of layers outside [alpha_min, alpha_max]; 3 = three layers
    mean_alpha_max = 4.5
    require_layers = true     # no layer may be skipped or failed
    allow_failed = true       # layers whose analysis or fit failed only warn (by default they fail the gate)

The table is looked up like ruff and pytest do: the nearest `pyproject.toml`
from the current directory upwards that has a `[tool.htsr.gate]` table, or the
file given with `--config`. With no rule configured anywhere the gate checks
broken fits (every gate does), and drift when `--baseline` is given.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from htsr_cli.errors import HtsrError, brief
from htsr_cli.io import check_depth, read_document
from htsr_cli.settings import QUALITY_BANDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no tomllib; tomli is the same parser released separately
    import tomli as tomllib

METRICS = ("alpha", "alpha_farms")
# max_alpha_drift when a baseline is given and no limit is set, per xmin rule: above what
# a bfloat16 or int8 re-save moves a trained layer, below what damage does (`make bench-gate`;
# median alphas move less under every change, so their limit is tighter).
DEFAULT_MAX_ALPHA_DRIFT: dict[str, float] = {"ks": 0.5, "median": 0.1, "peak": 0.5}
TABLE = "[tool.htsr.gate]"


@dataclass(frozen=True)
class GateConfig:
    """Which rules run and their limits; None (or False) means the rule is off."""

    metric: str = "alpha"
    alpha_min: float | None = None
    alpha_max: float | None = None
    max_flagged: int | float | None = None  # int: a count of layers; float in [0, 1): a fraction
    mean_alpha_max: float | None = None
    max_alpha_drift: float | None = None
    require_layers: bool = False
    allow_empty: bool = False  # pass when no layer has a value to check (otherwise that fails the gate)
    allow_failed: bool = False  # layers whose analysis or fit failed are warnings (otherwise errors)
    origin: str = "defaults"  # where the rules came from, for the output: a file, "flags", or both

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise HtsrError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.max_flagged is not None:
            validate_max_flagged(self.max_flagged, "max_flagged")
        # A NaN limit compares false with everything, so every rule would pass.
        # Infinity is allowed only where it means "no bound": alpha_min = -inf, alpha_max = inf.
        for key, allowed_infinity in (
            ("alpha_min", -math.inf), ("alpha_max", math.inf), ("mean_alpha_max", None), ("max_alpha_drift", None)
        ):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) or value == allowed_infinity):
                also = f" (or {allowed_infinity} for no bound)" if allowed_infinity is not None else ""
                raise HtsrError(f"{key} must be a finite number{also}, got {value}")
        if self.max_alpha_drift is not None and self.max_alpha_drift < 0:
            raise HtsrError(f"max_alpha_drift must not be negative, got {self.max_alpha_drift}")
        if self.alpha_min is not None and self.alpha_max is not None and self.alpha_min > self.alpha_max:
            raise HtsrError(
                f"alpha_min ({self.alpha_min}) is above alpha_max ({self.alpha_max}): no layer could pass"
            )

    @property
    def has_rules(self) -> bool:
        return self.require_layers or any(
            getattr(self, key) is not None
            for key in ("alpha_min", "alpha_max", "max_flagged", "mean_alpha_max", "max_alpha_drift")
        )

    def band(self, xmin: str) -> tuple[float, float]:
        """The [low, high] band that `max_flagged` counts against in a report fitted with the xmin rule
        `xmin`; unset ends are that rule's quality band (alphas of different xmin rules are not comparable)."""
        quality = QUALITY_BANDS[xmin]
        low = self.alpha_min if self.alpha_min is not None else quality[0]
        high = self.alpha_max if self.alpha_max is not None else quality[1]
        return low, high


KEYS = tuple(f.name for f in fields(GateConfig) if f.name != "origin")


def validate_max_flagged(value: int | float, name: str) -> None:
    """A whole count (3) or a fraction of the layers checked (0.1); nothing in between."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return
    if isinstance(value, float) and 0 <= value < 1:
        return
    raise HtsrError(
        f"{name} must be a whole number of layers (e.g. 3) or a fraction in [0, 1) (e.g. 0.1), got {value!r}"
    )


def parse_max_flagged(text: str) -> int | float:
    """The --max-flagged flag: '3' is a count, '0.1' a fraction."""
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise HtsrError(f"--max-flagged must be a count (3) or a fraction (0.1), got {text!r}") from None
    validate_max_flagged(value, "--max-flagged")
    return value


# No model has more layers; a larger count is a typo or a hostile file.
MAX_FLAGGED_COUNT = 2**63 - 1


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # TOML true is not a number


def config_from_table(table: Any, path: Path | str) -> GateConfig:
    """Validate the `[tool.htsr.gate]` table read from `path`; every message names both."""
    where = f"{path} {TABLE}"
    if not isinstance(table, dict):
        raise HtsrError(f"{where}: must be a table, got {table!r}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in KEYS:
            raise HtsrError(f"{where}: unknown key {key!r} (known: {', '.join(KEYS)})")
        if key == "metric":
            if value not in METRICS:
                raise HtsrError(f"{where}: 'metric' must be one of {', '.join(METRICS)}, got {value!r}")
        elif key in ("require_layers", "allow_empty", "allow_failed"):
            if not isinstance(value, bool):
                raise HtsrError(f"{where}: {key!r} must be true or false, got {value!r}")
        elif key == "max_flagged":
            if isinstance(value, int) and value > MAX_FLAGGED_COUNT:
                raise HtsrError(f"{where}: 'max_flagged' = {_shown(value)} is too large for a count of layers")
            if not _is_number(value):
                raise HtsrError(f"{where}: 'max_flagged' must be a count or a fraction, got {value!r}")
            validate_max_flagged(value, f"{where}: 'max_flagged'")
        elif not _is_number(value):
            raise HtsrError(f"{where}: {key!r} must be a number, got {value!r}")
        else:
            try:
                value = float(value)
            except OverflowError:  # a 400-digit integer
                raise HtsrError(f"{where}: {key!r} = {_shown(value)} is too large for a number") from None
        values[key] = value
    try:
        return GateConfig(**values, origin=str(path))
    except HtsrError as error:
        raise HtsrError(f"{where}: {error}") from None


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file (a regular file only: a FIFO named by mistake must not block the gate)."""
    data = read_document(path)
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError, ValueError) as error:
        # ValueError: an integer of more than 4300 digits
        raise HtsrError(f"{path}: cannot read TOML ({brief(error)})") from None
    check_depth(document, str(path))
    return document


def gate_table(data: dict[str, Any]) -> Any:
    """The `[tool.htsr.gate]` table of parsed TOML, or None when there is none."""
    htsr = data.get("tool", {}).get("htsr", {}) if isinstance(data.get("tool"), dict) else {}
    return htsr.get("gate") if isinstance(htsr, dict) else None


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml with a gate table, from `start` up to the filesystem root.

    The path is relative to the current directory (e.g. `../pyproject.toml`), as linters print it.
    """
    start = start.resolve()
    for directory in (start, *start.parents):
        candidate = Path(os.path.relpath(directory / "pyproject.toml"))
        if _exists(candidate) and gate_table(read_toml(candidate)) is not None:
            return candidate
    return None


def _exists(path: Path) -> bool:
    """Whether a path is there at all (an unreadable one is, and its reader says why)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def load_config(config_file: Path | None, start: Path) -> GateConfig:
    """Rules from `--config FILE`, else from the nearest pyproject.toml; no rules when neither has any."""
    path = config_file if config_file is not None else find_pyproject(start)
    if path is None:
        return GateConfig()
    table = gate_table(read_toml(path))
    if table is None:
        raise HtsrError(f"{path}: no {TABLE} table (see `htsr gate --help` for its keys)")
    return config_from_table(table, path)


def resolve_config(config_file: Path | None, start: Path, overrides: dict[str, Any]) -> GateConfig:
    """The rules the gate runs: file, then flags (None = flag not given).

    With no rule anywhere the gate runs its default checks (broken fits, and
    drift when given a baseline); the origin says why.
    """
    config = load_config(config_file, start)
    given = {key: value for key, value in overrides.items() if value is not None}
    if given:
        origin = "flags" if config.origin == "defaults" else f"{config.origin} and flags"
        config = replace(config, **given, origin=origin)
    if not config.has_rules:
        why = f"no {TABLE} found" if config.origin == "defaults" else f"{config.origin} sets no rule"
        config = replace(config, origin=f"defaults ({why})")
    return config


def check_drift_flag(max_alpha_drift: float | None, has_baseline: bool) -> None:
    """--max-alpha-drift asks for a drift check: without --baseline it cannot run (a config's limit only warns)."""
    if max_alpha_drift is not None and not has_baseline:
        raise HtsrError("--max-alpha-drift needs --baseline REPORT.json (the report to measure drift against)")
