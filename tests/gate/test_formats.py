"""The gate's verdict formats: JUnit XML, GitHub workflow commands, JSON and markdown."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from htsr_cli.gate.config import GateConfig
from htsr_cli.gate.formats import escape_data, escape_property, gate_github, gate_json, gate_markdown
from htsr_cli.gate.junit import gate_junit
from htsr_cli.gate.rules import evaluate
from tests.gate.test_rules import MIXED, layer, report


# ---- output formats --------------------------------------------------------------------

FAILING = GateConfig(alpha_min=2.0, alpha_max=6.0, mean_alpha_max=3.0, require_layers=True)


def test_junit_counts_match_the_violations():
    result = evaluate(MIXED, FAILING)
    root = ET.fromstring(gate_junit(result))
    suite = root.find("testsuite")
    assert suite.get("name") == "htsr gate"
    cases = suite.findall("testcase")
    # alpha_min, alpha_max: 4 layers each; mean_alpha_max: 1; require_layers: 5 layers
    assert int(suite.get("tests")) == len(cases) == 14
    failed = [case for case in cases if case.find("failure") is not None]
    assert int(suite.get("failures")) == len(failed) == len(result.errors) == 4
    assert [(c.get("classname"), c.get("name"), c.find("failure").get("message")) for c in failed] == [
        ("htsr.gate.alpha_min", "b", "alpha=1.500 < 2.0"),
        ("htsr.gate.alpha_max", "c", "alpha=7.000 > 6.0"),
        ("htsr.gate.mean_alpha_max", "mean_alpha_max", "mean alpha=3.500 > 3.0"),
        ("htsr.gate.require_layers", "e", "skipped: fewer than 10 eigenvalues"),
    ]


def test_junit_warnings_are_not_failures():
    root = ET.fromstring(gate_junit(evaluate(MIXED, GateConfig(max_flagged=2))))
    # max_flagged is one testcase; the broken-fit check every gate runs is one per layer
    (case,) = (case for case in root.iter("testcase") if case.get("classname") == "htsr.gate.max_flagged")
    assert len(list(root.iter("testcase"))) == 1 + len(MIXED.layers)
    assert case.find("failure") is None
    assert case.find("system-out").text == "warning: b: alpha=1.500 outside [2.0, 6.0]\nwarning: c: alpha=7.000 outside [2.0, 6.0]"
    assert root.get("failures") == "0"


ANNOTATION = re.compile(r"^::(error|warning) title=([^:,\r\n]*)::([^\r\n]*)$")


def test_github_annotations_follow_the_workflow_command_syntax():
    lines = gate_github(evaluate(MIXED, FAILING)).splitlines()
    annotations = [line for line in lines if line.startswith("::")]
    assert len(annotations) == 4
    for line in annotations:
        assert ANNOTATION.match(line), line
    assert annotations[0] == "::error title=htsr gate%3A alpha_min::b: alpha=1.500 < 2.0"
    assert lines[-1] == "htsr gate FAIL: 4 violations, 0 warnings; 4 of 4 rules failed on 5 layers"


def test_github_escaping():
    assert escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert escape_property("a:b,c%") == "a%3Ab%2Cc%25"
    odd = report(layer("enc:0,1\nx", 9.0))
    (line, _) = gate_github(evaluate(odd, GateConfig(alpha_max=6.0))).splitlines()
    # The newline is escaped visibly (printable) before GitHub's own escaping: no second line, no command.
    assert line == "::error title=htsr gate%3A alpha_max::enc:0,1\\x0ax: alpha=9.000 > 6.0"


def test_json_and_markdown():
    result = evaluate(MIXED, GateConfig(max_flagged=1, require_layers=True))
    data = gate_json(result)
    assert (data["schema"], data["verdict"], data["metric"]) == ("htsr.gate/1", "fail", "alpha")
    assert data["counts"] == {"layers": 5, "rules": 2, "rules_failed": 2, "violations": 2, "warnings": 2}
    assert data["rules"][0] == {
        "rule": "max_flagged", "limit": 1, "description": "at most 1 layer with alpha outside [2.0, 6.0]",
        "passed": False, "layers_checked": 4, "violations": 1, "warnings": 2, "band": [2.0, 6.0],
    }
    assert data["violations"][0] == {
        "rule": "max_flagged", "layer": "b", "severity": "warning", "value": 1.5, "limit": 2.0,
        "message": "alpha=1.500 outside [2.0, 6.0]",
    }
    markdown = gate_markdown(result)
    assert markdown.startswith("## htsr gate: FAIL\n")
    assert "| max_flagged | at most 1 layer with alpha outside [2.0, 6.0] | 4 | 1 | 2 | FAIL |" in markdown
    assert "| error | require_layers | e | skipped: fewer than 10 eigenvalues |" in markdown
