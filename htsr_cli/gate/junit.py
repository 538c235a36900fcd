"""The gate as a JUnit XML test suite, for CI test reporters.

Testcases (classname `htsr.gate.<rule>`): a rule judged on the whole model
(max_flagged, mean_alpha_max) is one testcase named after the rule; a rule
judged per layer (alpha_min, alpha_max, max_alpha_drift, require_layers) is one
testcase per layer it checked, named after the layer, plus one named after the
rule when it has a finding about the whole model. Each violation is one
`<failure>`; warnings go to the testcase's `<system-out>`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from htsr_cli.gate.formats import summary_line
from htsr_cli.gate.rules import ERROR, GateResult, RuleOutcome, Violation
from htsr_cli.render.outputs import printable

SUITE = "htsr gate"


def _testcases(outcome: RuleOutcome) -> list[tuple[str, list[Violation]]]:
    """(testcase name, its findings) for one rule."""
    model_level = [v for v in outcome.violations if v.layer is None]
    if not outcome.per_layer:
        return [(outcome.rule, list(outcome.violations))]
    by_layer: dict[str, list[Violation]] = {name: [] for name in outcome.checked}
    for violation in outcome.violations:
        if violation.layer is not None:
            by_layer.setdefault(violation.layer, []).append(violation)
    cases = [(outcome.rule, model_level)] if model_level else []
    return cases + list(by_layer.items())


def gate_junit(result: GateResult) -> str:
    suites = ET.Element("testsuites", name="htsr")
    suite = ET.SubElement(suites, "testsuite", name=SUITE)
    tests = failures = 0
    for outcome in result.outcomes:
        for name, findings in _testcases(outcome):
            # Names and messages come from the report: printable() leaves only
            # characters XML allows, so the file is always well-formed.
            case = ET.SubElement(suite, "testcase", classname=f"htsr.gate.{outcome.rule}", name=printable(name), time="0")
            tests += 1
            errors = [v for v in findings if v.severity == ERROR]
            if errors:
                failures += 1
                failure = ET.SubElement(case, "failure", message=printable(errors[0].message), type=outcome.rule)
                failure.text = "\n".join(printable(v.message) for v in errors)
            warnings = [v for v in findings if v.severity != ERROR]
            if warnings:
                ET.SubElement(case, "system-out").text = "\n".join(
                    printable(f"warning: {(v.layer + ': ') if v.layer and v.layer != name else ''}{v.message}")
                    for v in warnings
                )
    for element in (suites, suite):
        element.set("tests", str(tests))
        element.set("failures", str(failures))
        element.set("errors", "0")
    ET.SubElement(suite, "system-out").text = printable(summary_line(result))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
