"""A gate verdict for people (text, markdown) and for machines (JSON, GitHub annotations)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text

from htsr_cli import __version__
from htsr_cli.gate.rules import ERROR, GateResult, RuleOutcome, Violation, plural
from htsr_cli.render.outputs import Column, markdown_code, printable, to_markdown

SCHEMA = "htsr.gate/1"
FORMATS = ("text", "json", "github", "markdown")
MODEL = "(model)"  # the layer column of a finding about the whole model

RULE_COLUMNS = [
    Column("rule", "rule", justify="left"),
    Column("description", "limit", justify="left"),
    Column("checked", "layers checked"),
    Column("errors", "violations"),
    Column("warnings", "warnings"),
    Column("result", "result", justify="left"),
]
VIOLATION_COLUMNS = [
    Column("severity", "severity", justify="left"),
    Column("rule", "rule", justify="left"),
    Column("layer", "layer", justify="left"),
    Column("message", "finding", justify="left"),
]


def verdict(result: GateResult) -> str:
    return "PASS" if result.passed else "FAIL"


def summary_line(result: GateResult) -> str:
    failed = sum(1 for outcome in result.outcomes if not outcome.passed)
    return (
        f"{verdict(result)}: {plural(len(result.errors), 'violation')}, "
        f"{plural(len(result.warnings), 'warning')}; {failed} of {plural(len(result.outcomes), 'rule')} "
        f"failed on {plural(result.layers, 'layer')}"
    )


def _heading(result: GateResult) -> str:
    against = f", baseline {result.baseline}" if result.baseline else ""
    return f"htsr gate on {result.checkpoint}: metric {result.metric}, rules from {result.config.origin}{against}"


def _rule_row(outcome: RuleOutcome) -> dict[str, Any]:
    return {
        "rule": outcome.rule,
        "description": outcome.description,
        "checked": len(outcome.checked),
        "errors": sum(1 for v in outcome.violations if v.severity == ERROR),
        "warnings": sum(1 for v in outcome.violations if v.severity != ERROR),
        "result": "pass" if outcome.passed else "FAIL",
    }


def _violation_row(violation: Violation) -> dict[str, Any]:
    return {
        "severity": violation.severity,
        "rule": violation.rule,
        "layer": violation.layer or MODEL,
        "message": violation.message,
    }


def _line(text: str, style: str) -> Text:
    # CI logs are read with grep: one finding per line (piped output is as wide as its
    # longest line, so nothing wraps there; a terminal folds long lines rather than
    # cutting them), and no name from the report can start a line of its own (a
    # `::error` workflow command) or send escape sequences to the terminal.
    return Text(printable(text), style=style, overflow="fold")


def gate_text(result: GateResult) -> Group:
    """One line per violation (rule, layer, value and limit), then one line per rule and the verdict."""
    lines = [_line(_heading(result), "bold")]
    rows = [_violation_row(v) for v in result.violations]
    rule_width = max((len(row["rule"]) for row in rows), default=0)
    layer_width = max((len(row["layer"]) for row in rows), default=0)
    for row in rows:
        text = f"{row['severity']:<7}  {row['rule']:<{rule_width}}  {row['layer']:<{layer_width}}  {row['message']}"
        lines.append(_line(text, "red" if row["severity"] == ERROR else "yellow"))
    for outcome in result.outcomes:
        row = _rule_row(outcome)
        text = f"{row['result']:<4}  {outcome.rule}: {outcome.description} ({plural(row['checked'], 'layer')} checked)"
        lines.append(_line(text, "green" if outcome.passed else "red"))
    lines.append(_line(summary_line(result), "bold green" if result.passed else "bold red"))
    return Group(*lines)


def gate_json(result: GateResult) -> dict[str, Any]:
    rules = []
    for outcome in result.outcomes:
        row = _rule_row(outcome)
        entry = {
            "rule": outcome.rule, "limit": outcome.limit, "description": outcome.description,
            "passed": outcome.passed, "layers_checked": row["checked"],
            "violations": row["errors"], "warnings": row["warnings"],
        }
        if outcome.rule == "max_flagged":
            entry["band"] = list(result.band)
        rules.append(entry)
    return {
        "schema": SCHEMA,
        "htsr_version": __version__,
        "checkpoint": result.checkpoint,
        "baseline": result.baseline,
        "rules_from": result.config.origin,
        "metric": result.metric,
        "verdict": verdict(result).lower(),
        "rules": rules,
        "violations": [
            {
                "rule": v.rule, "layer": v.layer, "severity": v.severity,
                "value": v.value, "limit": v.limit, "message": v.message,
            }
            for v in result.violations
        ],
        "counts": {
            "layers": result.layers,
            "rules": len(result.outcomes),
            "rules_failed": sum(1 for outcome in result.outcomes if not outcome.passed),
            "violations": len(result.errors),
            "warnings": len(result.warnings),
        },
    }


def escape_data(text: str) -> str:
    """GitHub workflow-command message escaping (as in @actions/core)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Property values additionally may not hold the ':' and ',' that delimit them."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def gate_github(result: GateResult) -> str:
    """`::error title=...::message` per violation, `::warning` per warning, then the verdict."""
    lines = []
    for violation in result.violations:
        title = escape_property(f"htsr gate: {violation.rule}")
        where = f"{violation.layer}: " if violation.layer else ""
        lines.append(f"::{violation.severity} title={title}::{escape_data(printable(where + violation.message))}")
    lines.append(f"htsr gate {summary_line(result)}")
    return "\n".join(lines) + "\n"


def gate_markdown(result: GateResult) -> str:
    """The step-summary view: verdict, one row per rule, one row per finding."""
    parts = [
        f"## htsr gate: {verdict(result)}\n",
        f"{markdown_code(result.checkpoint)}: metric `{result.metric}`, rules from {markdown_code(result.config.origin)}"
        + (f", baseline {markdown_code(result.baseline)}" if result.baseline else "")
        + "\n",
        to_markdown(RULE_COLUMNS, [_rule_row(outcome) for outcome in result.outcomes]),
    ]
    if result.violations:
        parts.append(to_markdown(VIOLATION_COLUMNS, [_violation_row(v) for v in result.violations]))
    parts.append(f"**{summary_line(result)}**\n")
    return "\n".join(parts)
