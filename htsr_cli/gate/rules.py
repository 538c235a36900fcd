"""The gate's rules: pure checks of a `Report` (and a baseline) against a `GateConfig`.

Every rule reports every offending layer, not just the first. A violation with
severity "error" fails the gate; a "warning" is only reported. With no rule
configured the gate checks broken fits, and drift when a baseline is given:
the rules `make bench-gate` found to pass trained models (docs/gate.md).

- failed layers (always): a layer whose analysis failed (non-finite weights or
  eigenvalues) or whose fit failed has no alpha, so no rule below can judge it;
  each is an error (a warning with `allow_failed`). Not a separate finding when
  `require_layers` is on, which already fails on them, nor when no layer has a
  value, which `allow_empty` judges.
- `max_alpha_drift`: |metric - baseline metric| per layer, matched by name;
  DEFAULT_MAX_ALPHA_DRIFT of the report's xmin rule whenever a baseline is
  given and no limit is set. A
  layer that lost its value (fitted in the baseline, not now) is an error; a
  layer on one side only, or without a value in the baseline, is a warning
  (architectures change; `require_layers` is the rule for failed layers); no
  layer in common at all is an error. Analysis settings that differ from the
  baseline's (xmin, FARMS, conv scale, precision) are a warning. A limit set
  without a baseline is a warning that drift was not checked.
- `alpha_min` / `alpha_max`: each layer's metric must lie in the band. When
  `max_flagged` is also set they only define its band (see below).
- `max_flagged`: the layers outside [alpha_min, alpha_max] (unset ends: the
  quality band of the xmin rule the report was fitted with, QUALITY_BANDS) may
  number at most this many (int) or this fraction of the layers with a value
  (float). Each such layer is a warning; the count over the limit is the error.
- `mean_alpha_max`: the mean metric over layers with a value.
- `require_layers`: every layer must have status "ok".
- `allow_empty`: not a rule but a permission. When no layer has a value of the
  metric, every rule above passes vacuously; the gate then fails with an
  `allow_empty` finding unless `allow_empty = true` (then it is a warning).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from htsr_cli.results.compare import COMPARED, NO_VALUE_A, NO_VALUE_B, ONLY_A, ONLY_B, compare_reports, require_metric
from htsr_cli.gate.config import DEFAULT_MAX_ALPHA_DRIFT, GateConfig
from htsr_cli.results.report import FAILED, FIT_FAILED, OK, Report

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Violation:
    rule: str
    layer: str | None  # None: a finding about the whole model
    value: float | None
    limit: float | None
    message: str  # what is wrong, e.g. "alpha=1.732 < 2.0"
    severity: str = ERROR


@dataclass(frozen=True)
class RuleOutcome:
    rule: str
    limit: float | int | None
    description: str  # the rule in words, e.g. "alpha >= 2.0 in every layer"
    per_layer: bool  # judged layer by layer (one JUnit testcase per layer) or once for the model
    checked: tuple[str, ...]  # the layers the rule looked at
    violations: tuple[Violation, ...]

    @property
    def passed(self) -> bool:
        return not any(v.severity == ERROR for v in self.violations)


@dataclass(frozen=True)
class GateResult:
    checkpoint: str
    metric: str
    config: GateConfig
    layers: int  # layers in the report, whatever their status
    outcomes: tuple[RuleOutcome, ...]
    baseline: str | None = None
    band: tuple[float, float] | None = None  # the band max_flagged counted against, when it ran

    @property
    def violations(self) -> list[Violation]:
        return [v for outcome in self.outcomes for v in outcome.violations]

    @property
    def errors(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == ERROR]

    @property
    def warnings(self) -> list[Violation]:
        return [v for v in self.violations if v.severity == WARNING]

    @property
    def passed(self) -> bool:
        return not self.errors


def metric_values(report: Report, metric: str) -> dict[str, float]:
    """Layer name -> metric, in module order, for the layers that have one."""
    return {
        layer.name: value
        for layer in report.layers
        if layer.status == OK and (value := layer.metric(metric)) is not None  # the status is trusted over numbers
    }


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def check_bound(values: dict[str, float], rule: str, limit: float, metric: str) -> RuleOutcome:
    """alpha_min (every value >= limit) or alpha_max (every value <= limit)."""
    below = rule == "alpha_min"
    sign, relation = ("<", ">=") if below else (">", "<=")
    offending = [
        Violation(rule, name, value, limit, f"{metric}={_fmt(value)} {sign} {limit}")
        for name, value in values.items()
        if (value < limit if below else value > limit)
    ]
    return RuleOutcome(
        rule, limit, f"{metric} {relation} {limit} in every layer", True, tuple(values), tuple(offending)
    )


def check_max_flagged(
    values: dict[str, float], limit: int | float, band: tuple[float, float], metric: str
) -> RuleOutcome:
    low, high = band
    flagged = [
        Violation(
            "max_flagged", name, value, low if value < low else high,
            f"{metric}={_fmt(value)} outside [{low}, {high}]", WARNING,
        )
        for name, value in values.items()
        if not low <= value <= high
    ]
    checked = len(values)
    if isinstance(limit, int):
        allowed = plural(limit, "layer")
        measured: float = len(flagged)
        share = ""
    else:
        allowed = f"{limit * 100:g}% of layers"
        measured = len(flagged) / checked if checked else 0.0
        share = f" ({measured * 100:.1f}%)"
    description = f"at most {allowed} with {metric} outside [{low}, {high}]"
    violations = list(flagged)
    if measured > limit:
        message = f"{len(flagged)} of {checked} layers{share} outside [{low}, {high}] (allowed: {allowed})"
        violations.append(Violation("max_flagged", None, measured, limit, message))
    return RuleOutcome("max_flagged", limit, description, False, tuple(values), tuple(violations))


def check_mean(values: dict[str, float], limit: float, metric: str) -> RuleOutcome:
    description = f"mean {metric} <= {limit}"
    if not values:  # nothing to average: the allow_empty check decides
        return RuleOutcome("mean_alpha_max", limit, description, False, (), ())
    mean = sum(values.values()) / len(values)
    violations = ()
    if mean > limit:
        violations = (
            Violation("mean_alpha_max", None, mean, limit, f"mean {metric}={_fmt(mean)} > {limit}"),
        )
    return RuleOutcome("mean_alpha_max", limit, description, False, tuple(values), violations)


# How max_alpha_drift judges each matched layer (A = baseline, B = this report).
DRIFT_FINDINGS = {
    NO_VALUE_A: (WARNING, "no {metric} in the baseline"),
    NO_VALUE_B: (ERROR, "{metric} lost: {before} in the baseline, none now"),
    ONLY_A: (WARNING, "in the baseline only"),
    ONLY_B: (WARNING, "not in the baseline"),
}


def check_drift(report: Report, baseline: Report, limit: float, metric: str) -> RuleOutcome:
    rule = "max_alpha_drift"
    comparison = compare_reports(baseline, report, metric)
    violations = [
        Violation(rule, None, None, limit, f"settings differ from the baseline ({difference})", WARNING)
        for difference in comparison.settings_differences
    ]
    for layer in comparison.layers:
        if layer.status == COMPARED:
            drift = abs(layer.delta)
            if drift > limit:
                message = f"|{metric} drift|={_fmt(drift)} > {limit} ({_fmt(layer.before)} -> {_fmt(layer.after)})"
                violations.append(Violation(rule, layer.name, drift, limit, message))
        elif layer.status in DRIFT_FINDINGS:  # no value on either side is require_layers' business
            severity, message = DRIFT_FINDINGS[layer.status]
            before = _fmt(layer.before) if layer.before is not None else None
            message = message.format(metric=metric, before=before)
            violations.append(Violation(rule, layer.name, None, limit, message, severity))
    if not comparison.compared:
        violations.append(
            Violation(
                rule, None, None, limit,
                f"no layer with a value of {metric} in common with the baseline {baseline.checkpoint}",
            )
        )
    description = f"|{metric} - baseline {metric}| <= {limit} in every layer"
    names = tuple(layer.name for layer in report.layers)
    return RuleOutcome(rule, limit, description, True, names, tuple(violations))


def check_require_layers(report: Report) -> RuleOutcome:
    violations = tuple(
        Violation(
            "require_layers", layer.name, None, None,
            f"{layer.status}: {layer.reason}" if layer.reason else layer.status,
        )
        for layer in report.layers
        if layer.status != OK
    )
    names = tuple(layer.name for layer in report.layers)
    return RuleOutcome("require_layers", None, "every layer analyzed and fitted", True, names, violations)


def check_failed_layers(report: Report, allow_failed: bool, judged: set[str]) -> RuleOutcome:
    """Layers whose analysis or fit failed: a broken fit, the one rule every gate runs.

    Such a layer has no alpha: without this finding a NaN weight among healthy
    layers would pass every alpha rule vacuously, and a layer collapsed to a few
    directions (rank 1) has no power-law tail to fit. Layers in `judged` already
    failed another rule (max_alpha_drift: alpha lost) and are not reported twice.
    """
    failing = [
        layer for layer in report.layers if layer.status in (FAILED, FIT_FAILED) and layer.name not in judged
    ]
    severity = WARNING if allow_failed else ERROR
    violations = tuple(
        Violation("failed_layers", layer.name, None, None, f"{layer.status}: {layer.reason}" if layer.reason else layer.status, severity)
        for layer in failing
    )
    names = tuple(layer.name for layer in report.layers)
    description = "no layer whose analysis or fit failed" + (" (allow_failed: reported only)" if allow_failed else "")
    return RuleOutcome("failed_layers", None, description, True, names, violations)


def _failed_layers(outcomes: list[RuleOutcome]) -> set[str]:
    return {v.layer for outcome in outcomes for v in outcome.violations if v.severity == ERROR and v.layer}


def check_not_empty(report: Report, metric: str, allow_empty: bool) -> RuleOutcome:
    """No layer has a value to judge: every rule passed vacuously, which must not read as a pass.

    A model whose layers are all skipped, failed or unfitted (or a report with
    no layers) fails, unless `allow_empty` says an empty check is acceptable.
    """
    statuses = ", ".join(
        f"{sum(1 for layer in report.layers if layer.status == status)} {status}"
        for status in dict.fromkeys(layer.status for layer in report.layers)
    )
    found = f"{plural(len(report.layers), 'layer')}" + (f": {statuses}" if statuses else "")
    if allow_empty:
        message = f"no layer has a value of {metric} to check ({found}); passed because allow_empty = true"
        violation = Violation("allow_empty", None, 0, None, message, WARNING)
    else:
        message = (
            f"no layer has a value of {metric} to check ({found}); "
            "set allow_empty = true (or --allow-empty) to pass such a model"
        )
        violation = Violation("allow_empty", None, 0, None, message)
    description = f"at least one layer with a value of {metric}"
    return RuleOutcome("allow_empty", None, description, False, (), (violation,))


def drift_not_checked(limit: float, metric: str) -> RuleOutcome:
    """max_alpha_drift configured (a shared pyproject.toml) but no baseline given: said, not failed."""
    message = "not checked: no baseline given (--baseline REPORT.json)"
    description = f"|{metric} - baseline {metric}| <= {limit} in every layer"
    return RuleOutcome("max_alpha_drift", limit, description, True, (), (Violation("max_alpha_drift", None, None, limit, message, WARNING),))


def evaluate(report: Report, config: GateConfig, baseline: Report | None = None) -> GateResult:
    """Run every configured rule on `report`, and the broken-fit check that always runs.

    With a `baseline`, max_alpha_drift runs (the report's xmin rule's
    DEFAULT_MAX_ALPHA_DRIFT unless the config sets it); without one, a
    configured max_alpha_drift is a warning that drift was not checked.
    """
    metric = config.metric
    xmin = report.settings.get("xmin", "ks")
    if baseline is not None and config.max_alpha_drift is None:
        config = replace(config, max_alpha_drift=DEFAULT_MAX_ALPHA_DRIFT[xmin])
    require_metric(report, metric, "report")
    values = metric_values(report, metric)
    outcomes: list[RuleOutcome] = []
    band = None
    if config.max_flagged is None:
        for rule in ("alpha_min", "alpha_max"):
            if (limit := getattr(config, rule)) is not None:
                outcomes.append(check_bound(values, rule, limit, metric))
    else:
        band = config.band(xmin)
        outcomes.append(check_max_flagged(values, config.max_flagged, band, metric))
    if config.mean_alpha_max is not None:
        outcomes.append(check_mean(values, config.mean_alpha_max, metric))
    if config.max_alpha_drift is not None and baseline is None:
        outcomes.append(drift_not_checked(config.max_alpha_drift, metric))
    elif config.max_alpha_drift is not None:
        require_metric(baseline, metric, "baseline")
        outcomes.append(check_drift(report, baseline, config.max_alpha_drift, metric))
    if config.require_layers:
        outcomes.append(check_require_layers(report))
    elif values:  # (with no value at all, allow_empty's finding counts them)
        outcomes.append(check_failed_layers(report, config.allow_failed, _failed_layers(outcomes)))
    if not values:
        outcomes.append(check_not_empty(report, metric, config.allow_empty))
    return GateResult(
        checkpoint=report.checkpoint,
        metric=metric,
        config=config,
        layers=len(report.layers),
        outcomes=tuple(outcomes),
        baseline=baseline.checkpoint if baseline is not None else None,
        band=band,
    )
