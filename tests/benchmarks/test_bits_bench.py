"""bench-bits' RTN-error baseline: the alpha plan's units and budget, re-solved with measured errors."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "benchmarks"))

from bits import error_plan  # noqa: E402


def _entry(name, unit, params, bits):
    return {"name": name, "tensor": name + ".weight", "unit": unit, "params": params, "bits": bits}


def test_the_baseline_keeps_units_and_budget_and_follows_the_errors():
    plan = {
        "settings": {"choices": [2, 3, 4]},
        "layers": [
            _entry("a.q", "a.qkv", 2, 3), _entry("a.k", "a.qkv", 2, 3),
            _entry("b", "b", 4, 3), _entry("c", "c", 4, 3), _entry("emb", None, 9, None),
        ],
    }
    # Per matrix, the squared RTN error at 2, 3, 4 bits: b is hard to quantize, c easy.
    errors = {"a.q.weight": [4.0, 1.0, 0.25], "a.k.weight": [4.0, 1.0, 0.25],
              "b.weight": [64.0, 16.0, 4.0], "c.weight": [0.4, 0.1, 0.025]}
    solved = error_plan(plan, errors, 3.0)
    bits = {entry["name"]: entry["bits"] for entry in solved["layers"]}
    assert bits == {"a.q": 3, "a.k": 3, "b": 4, "c": 2, "emb": None}
    assert plan["layers"][2]["bits"] == 3  # the alpha plan itself is left as it was
