"""How far alphas move between two runs, and which layers a float32 eigensolve gets wrong.

    from accuracy import read_fits, alpha_differences, report_facts, float32_alpha_shifts, guard_summary
    diff = alpha_differences(read_fits(default_report), read_fits(float64_report))
    diff["max_abs_diff"], diff["xmin_changed"], diff["layers"]

Everything is read from htsr.report/1 JSON files (and WeightWatcher's
per-layer JSON from ww_runner.py), so it works with whichever htsr wrote them:
fields a report does not carry (e.g. `eigensolver_redone` before the float32
guard existed) are reported as not recorded, never filled in.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch

from floor import gram_eigenvalues
from weights import weight_matrices

ALPHA_TOLERANCE = 1e-3  # issue 15: max |alpha difference| from the all-float64 path
# xmin is one of the eigenvalues: a relative move above this means the fit chose
# another one, not that the same eigenvalue came out a few ulps different.
XMIN_RELATIVE_TOLERANCE = 1e-5
# The settings that say how a run's arithmetic was done (present when that htsr records them).
PRECISION_SETTINGS = ("precision", "gram_precision", "eigensolver_precision", "device")
REDONE_FIELD = "eigensolver_redone"

Fit = tuple[float | None, float | None]  # (alpha, xmin); None where the layer has no fit


def read_fits(document: dict, key: str = "tensor") -> dict[str, Fit]:
    """Layer (by its `key` field: the tensor key, or the module `name`) -> (alpha, xmin)."""
    return {layer[key]: (layer.get("alpha"), layer.get("xmin")) for layer in document["layers"]}


def alpha_differences(measured: dict[str, Fit], reference: dict[str, Fit]) -> dict:
    """|alpha - reference alpha| over the layers both runs fitted, and what else differs."""
    shared = [name for name in measured if name in reference]
    fitted = [name for name in shared if measured[name][0] is not None and reference[name][0] is not None]
    differences = [abs(measured[name][0] - reference[name][0]) for name in fitted]
    xmin_changed = [
        name
        for name in fitted
        if None not in (measured[name][1], reference[name][1])
        and not math.isclose(measured[name][1], reference[name][1], rel_tol=XMIN_RELATIVE_TOLERANCE)
    ]
    return {
        "layers": len(fitted),
        "max_abs_diff": max(differences) if differences else None,
        "median_abs_diff": statistics.median(differences) if differences else None,
        "within_tolerance": sum(difference <= ALPHA_TOLERANCE for difference in differences),
        "xmin_changed": len(xmin_changed),
        # A layer one run fitted and the other did not (or that only one run has) is a disagreement too.
        "fitted_in_one_only": sum(
            (measured.get(name, (None,))[0] is None) != (reference.get(name, (None,))[0] is None)
            for name in set(measured) | set(reference)
        ),
    }


def report_facts(document: dict) -> dict:
    """What a report says about its own arithmetic: the precision settings and the layers redone in float64."""
    settings = {key: document["settings"][key] for key in PRECISION_SETTINGS if key in document["settings"]}
    recorded = any(REDONE_FIELD in layer for layer in document["layers"])
    redone = [layer["tensor"] for layer in document["layers"] if layer.get(REDONE_FIELD)] if recorded else None
    return {"settings": settings, "redone": redone}


def read_json(path: str | Path | None) -> dict | None:
    """A JSON file's content, or None when there is no such file (a failed or older run)."""
    if path is None or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def _alpha(eigenvalues: torch.Tensor, xmin: str) -> float | None:
    from htsr_cli.spectra.fit import fit_power_law

    esd = torch.sort(eigenvalues.flatten().double().clamp_min(0.0)).values
    fit = fit_power_law(esd, xmin)
    return None if fit is None else fit.alpha


def float32_alpha_shifts(checkpoint: Path, xmin: str = "ks") -> dict[str, dict]:
    """Per weight: alpha from a float32 Gram and float32 eigensolve (the unguarded float32 path,
    before any redo) and from the all-float64 path, both fitted in float64 by htsr's own fit."""
    shifts = {}
    for key, weight in weight_matrices(checkpoint):
        cpu = torch.device("cpu")
        shifts[key] = {
            "float32": _alpha(gram_eigenvalues(weight, cpu, torch.float32), xmin),
            "float64": _alpha(gram_eigenvalues(weight, cpu, torch.float64), xmin),
        }
        del weight
    return shifts


def redo_needed(shift: dict) -> bool:
    """A float32 eigensolve must be redone when it moves alpha by more than the tolerance (or loses/gains a fit)."""
    if shift["float32"] is None or shift["float64"] is None:
        return shift["float32"] != shift["float64"]
    return abs(shift["float32"] - shift["float64"]) > ALPHA_TOLERANCE


def guard_summary(redone: list[str] | None, shifts: dict[str, dict]) -> dict:
    """Which layers the float32 guard redid against which ones needed it (`redone` None: not recorded)."""
    needed = sorted(key for key, shift in shifts.items() if redo_needed(shift))
    differences = [abs(s["float32"] - s["float64"]) for s in shifts.values() if None not in (s["float32"], s["float64"])]
    summary = {
        "layers": len(shifts),
        "needed": needed,
        "float32_max_abs_diff": max(differences) if differences else None,
        "recorded": redone is not None,
    }
    if redone is not None:
        summary.update(
            redone=sorted(redone),
            unneeded=sorted(set(redone) - set(needed)),
            missed=sorted(set(needed) - set(redone)),
        )
    return summary
