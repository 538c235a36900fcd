"""The quality gate: HT-SR rules over a `Report`, for CI.

    config = resolve_config(None, Path.cwd(), {"alpha_max": 5.0})
    result = evaluate(report, config, baseline=None)
    result.passed, result.violations

`config` reads `[tool.htsr.gate]`, `rules` judges a report, `formats` and
`junit` render the verdict.
"""

from htsr_cli.gate.config import GateConfig, load_config, resolve_config
from htsr_cli.gate.rules import GateResult, RuleOutcome, Violation, evaluate

__all__ = ["GateConfig", "GateResult", "RuleOutcome", "Violation", "evaluate", "load_config", "resolve_config"]
