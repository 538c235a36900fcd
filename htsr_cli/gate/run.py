"""The gate over a training run: `htsr gate`'s rules on every checkpoint, drift against the previous one.

    results = evaluate_run(reports, GateConfig(alpha_min=2, alpha_max=6, max_alpha_drift=0.5))

Each checkpoint's report is judged with `evaluate`; `max_alpha_drift` takes
the previous checkpoint as its baseline, so the first checkpoint is judged by
the other rules only. The run passes when every checkpoint does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from htsr_cli.gate.config import GateConfig
from htsr_cli.gate.rules import GateResult, evaluate
from htsr_cli.results.report import Report


def evaluate_run(reports: list[Report], config: GateConfig) -> list[GateResult]:
    """One `GateResult` per report, in run order."""
    first = replace(config, max_alpha_drift=None)
    results = []
    for index, report in enumerate(reports):
        if index == 0 or config.max_alpha_drift is None:
            results.append(evaluate(report, first))
        else:
            results.append(evaluate(report, config, baseline=reports[index - 1]))
    return results


def run_gate_json(results: list[GateResult], steps: list[int]) -> dict[str, Any]:
    """The run's verdict and each failing finding, for the htsr.track/1 document."""
    return {
        "passed": all(result.passed for result in results),
        "metric": results[0].metric if results else None,
        "findings": [
            {
                "checkpoint": result.checkpoint,
                "step": step,
                "rule": violation.rule,
                "layer": violation.layer,
                "severity": violation.severity,
                "message": violation.message,
            }
            for result, step in zip(results, steps)
            for violation in result.violations
        ],
    }
