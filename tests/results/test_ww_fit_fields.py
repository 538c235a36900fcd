"""The report fields of WeightWatcher's variants (--fit, --fix-fingers, --small-n): written
only when asked for, valid against the schema, read back, and in `to_pandas()`."""

from __future__ import annotations

import json

import htsr_cli
from htsr_cli.results.report import CLIP_FIELDS, TPL_FIELDS, Report
from tests.conftest import small_state_dict
from tests.results.test_schemas import validate

NEW_SETTINGS = ("fit", "fix_fingers", "small_n")


def test_defaults_write_no_new_field():
    report = htsr_cli.analyze(small_state_dict(), layers="head|blocks.0.fc1")
    document = json.loads(report.dumps())
    assert not set(NEW_SETTINGS) & set(document["settings"])
    for layer in document["layers"]:
        assert not (set(TPL_FIELDS) | set(CLIP_FIELDS)) & set(layer)
    assert not (set(TPL_FIELDS) | set(CLIP_FIELDS)) & set(report.to_pandas().columns)


def test_variants_write_their_fields_validate_and_read_back():
    report = htsr_cli.analyze(small_state_dict(), layers="^head$", fit="tpl", fix_fingers="clip_xmax", small_n="ww")
    document = json.loads(report.dumps())
    validate(document)
    assert {key: document["settings"][key] for key in NEW_SETTINGS} == {"fit": "tpl", "fix_fingers": "clip_xmax", "small_n": "ww"}
    [layer] = document["layers"]
    assert layer["num_evals"] == 10 and layer["alpha_tpl"] is not None and layer["tail_size_tpl"] >= 2
    assert layer["num_fingers"] >= 0 and layer["raw_alpha"] is not None
    again = Report.from_json(document)
    assert again.dumps() == report.dumps()
    frame = again.to_pandas()
    assert {"alpha_tpl", "lambda_tpl", "raw_alpha", "num_fingers"} <= set(frame.columns)
    assert frame["alpha_tpl"][0] == layer["alpha_tpl"]
