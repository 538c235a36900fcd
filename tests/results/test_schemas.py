"""Every JSON document htsr writes validates against its schema in docs/schemas/, and the schemas are strict."""

from __future__ import annotations

import copy
import json
import math
import struct

import pytest
import torch
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from safetensors.torch import save_file

from tests.conftest import FIXTURES, REPO

SCHEMAS = {
    path.name.removesuffix(".schema.json").replace("-", "/"): json.loads(path.read_text())
    for path in (REPO / "docs" / "schemas").glob("*.schema.json")
}
REGISTRY = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema)) for schema in SCHEMAS.values()
)
TINY_CNN = FIXTURES / "tiny-cnn-trained.pth"
TINY_LLAMA = FIXTURES / "tiny-llama"


def validate(document: dict, schema: str | None = None) -> None:
    name = schema or document["schema"].removeprefix("htsr.")
    Draft202012Validator(SCHEMAS[name], registry=REGISTRY).validate(document)


def errors(document: dict, schema: str) -> list[str]:
    validator = Draft202012Validator(SCHEMAS[schema], registry=REGISTRY)
    return [error.message for error in validator.iter_errors(document)]


def test_every_schema_is_a_valid_2020_12_schema_with_its_own_id():
    assert sorted(SCHEMAS) == [
        "bits/1", "compare/1", "convert/1", "describe/1", "diagnosis/1", "ensemble/1", "experts/1", "gate/1", "landscape/1", "lr_schedule/1", "md_tree/1",
        "perplexity/1", "prune/1", "quantize/1", "report/1", "smooth/1", "sparsity/1", "spectra/1", "track/1",
    ]
    for name, schema in SCHEMAS.items():
        Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"urn:htsr:schema:{name}" and schema["title"] == f"htsr.{name}"


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    """One of each document the CLI writes, from the shipped fixtures and a model with every layer status."""
    from typer.testing import CliRunner

    from htsr_cli.cli.app import app

    folder = tmp_path_factory.mktemp("documents")
    statuses = folder / "statuses.safetensors"
    save_file({
        "blocks.0.q.weight": torch.randn(40, 24, generator=torch.Generator().manual_seed(0)),
        "blocks.0.eye.weight": torch.eye(16),  # fit-failed
        "blocks.1.nan.weight": torch.full((16, 16), float("nan")),  # failed
        "blocks.1.zero.weight": torch.zeros(32, 16),  # all-zero
        "tiny.weight": torch.randn(4, 40),  # skipped
        "ids.weight": torch.zeros(8, 8, dtype=torch.int8),  # quantized
    }, statuses)
    runner = CliRunner()
    runs = {
        "report": ["analyze", TINY_CNN, "-f", "json"],
        "report-farms": ["analyze", TINY_LLAMA, "-f", "json", "--farms", "--farms-window", "16", "--farms-steps", "3",
                         "--save-spectra", folder / "llama.spectra.safetensors"],
        "report-statuses": ["analyze", statuses, "-f", "json", "--xmin", "median", "--save-spectra",
                            folder / "statuses.spectra.safetensors"],
        "sparsity-block": ["allocate", "sparsity", TINY_LLAMA, "--target", "0.7", "-f", "json"],
        "sparsity-matrix": ["allocate", "sparsity", TINY_CNN, "--target", "0.5", "--granularity", "matrix", "--no-clip", "-f", "json"],
        "experts": ["allocate", "experts", TINY_LLAMA, "-f", "json"],
        "lr": ["lr-schedule", "export", TINY_CNN, "--base-lr", "0.1", "-f", "json"],
        "lr-epochs": ["lr-schedule", "export", TINY_CNN, "--base-lr", "0.1", "--epochs", "3", "--map", "sigmoid", "--unit", "block", "-f", "json"],
        "gate": ["gate", TINY_CNN, "--alpha-max", "3", "--max-flagged", "1", "--format", "json"],
        "compare": ["compare", TINY_CNN, statuses, "-f", "json"],
        "track": ["track", TINY_CNN, TINY_CNN, "--no-cache", "--max-alpha-drift", "0.5", "-f", "json"],
        "describe": ["describe", statuses, "-f", "json"],
    }
    out = {}
    for name, args in runs.items():
        target = folder / f"{name}.json"
        result = runner.invoke(app, [str(arg) for arg in [*args, "-o", target, "-q"]])
        assert result.exit_code in (0, 1), (name, result.output)
        out[name] = json.loads(target.read_text())
    farms_report = folder / "report-farms.json"
    for name, args in {
        "sparsity-farms": ["allocate", "sparsity", farms_report, "--target", "0.6", "--metric", "alpha_farms", "-f", "json"],
        "experts-farms": ["allocate", "experts", farms_report, "--metric", "alpha_farms", "-f", "json"],
        "lr-farms": ["lr-schedule", "export", farms_report, "--base-lr", "0.01", "--metric", "alpha_farms", "-f", "json"],
        "lr-yaml": ["lr-schedule", "export", TINY_CNN, "--base-lr", "0.1", "--epochs", "2", "-f", "yaml"],
        "compare-farms": ["compare", farms_report, farms_report, "--metric", "alpha_farms", "-f", "json"],
    }.items():
        target = folder / f"{name}.out"
        result = runner.invoke(app, [str(arg) for arg in [*args, "-o", target, "-q"]])
        assert result.exit_code == 0, (name, result.output)
        out[name] = yaml.safe_load(target.read_text()) if name == "lr-yaml" else json.loads(target.read_text())
    for name in ("llama", "statuses"):
        raw = (folder / f"{name}.spectra.safetensors").read_bytes()
        (length,) = struct.unpack("<Q", raw[:8])
        out[f"spectra-{name}"] = json.loads(raw[8 : 8 + length])
    return out


def test_every_document_htsr_writes_validates(documents):
    assert {doc.get("schema") for doc in documents.values()} >= {
        "htsr.report/1", "htsr.sparsity/1", "htsr.lr_schedule/1", "htsr.experts/1", "htsr.gate/1", "htsr.compare/1",
        "htsr.track/1", "htsr.describe/1",
    }
    for name, document in documents.items():
        validate(document, "spectra/1" if name.startswith("spectra-") else None)
    statuses = {layer["status"] for layer in documents["report-statuses"]["layers"]}
    assert statuses == {"ok", "skipped", "failed", "fit-failed"}
    assert documents["gate"]["verdict"] == "fail"


def test_python_api_documents_validate_too():
    import htsr_cli

    report = htsr_cli.analyze(TINY_LLAMA, farms=htsr_cli.FarmsSettings(window=16, steps=3))
    validate(json.loads(report.dumps()))
    validate(htsr_cli.sparsity_plan(report, htsr_cli.SparsitySettings(target=0.5)))
    validate(htsr_cli.expert_plan(report, htsr_cli.ExpertSettings(total=9)))
    validate(htsr_cli.lr_schedule(report, htsr_cli.LrSettings(base_lr=0.1, epochs=2)))
    validate(htsr_cli.compare_reports(report, report).to_json())


@pytest.mark.parametrize(("path", "value", "message"), [
    (("layers", 0, "quality"), "<b>great</b>", "is not one of"),
    (("layers", 0, "status"), "done", "is not one of"),
    (("layers", 0, "surprise"), 1, "Additional properties are not allowed"),
    (("settings", "xmin"), "mean", "is not one of"),
    (("summary", "analysed"), 6, "Additional properties are not allowed"),
    (("layers", 0, "alpha"), "3.1", "is not of type"),
    (("schema",), "htsr.report/2", "was expected"),
])
def test_report_schema_is_strict(documents, path, value, message):
    document = copy.deepcopy(documents["report"])
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert any(message in error for error in errors(document, "report/1")), errors(document, "report/1")


def test_fields_other_branches_add_are_optional_and_typed(documents):
    document = copy.deepcopy(documents["report"])
    document["settings"].update(precision="mixed", gram_precision="float32", eigensolver_precision="float64")
    document["layers"][0]["eigensolver_redone"] = True
    document["layers"][1]["eigensolver_redone"] = None
    validate(document)
    document["layers"][0]["eigensolver_redone"] = "yes"
    assert errors(document, "report/1")


def test_allocation_schemas_reject_a_missing_metric_and_extra_fields(documents):
    document = copy.deepcopy(documents["sparsity-block"])
    del document["layers"][1]["alpha"]
    assert errors(document, "sparsity/1")
    document = copy.deepcopy(documents["experts"])
    document["summary"]["total"] = 3
    assert errors(document, "experts/1")
    document = copy.deepcopy(documents["spectra-llama"])
    document["weights/x"] = document.pop(next(key for key in document if key.startswith("esd/")))
    assert errors(document, "spectra/1")


def test_prune_records_and_perplexity_documents_validate(tmp_path, cli, tiny_lms):
    """htsr-prune.json of a magnitude-pruned model and `eval perplexity -f json` of the result."""
    out = tmp_path / "pruned"
    result = cli("prune", TINY_LLAMA, "--target", "0.5", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "htsr-prune.json").read_text())
    validate(record)
    assert record["summary"]["achieved"] == pytest.approx(0.5, abs=1e-4)
    text = tmp_path / "eval.txt"
    text.write_text(" ".join(f"w{i % 90}" for i in range(400)))
    result = cli("eval", "perplexity", tiny_lms["llama"], "--text", text, "--seq-len", "32", "-f", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    validate(document)
    assert document["perplexity"] == pytest.approx(math.exp(document["mean_nll"]))
    broken = copy.deepcopy(record)
    broken["layers"][0]["pruned"] = -1
    assert errors(broken, "prune/1")


def test_diagnosis_and_md_tree_documents_validate_and_are_strict(tmp_path, cli):
    """`htsr diagnose -f json`, the shipped tree and a tree `htsr diagnose --fit` writes."""
    from htsr_cli.diagnosis.md_tree import SHIPPED
    from tests.diagnosis.dataset import synthetic_population

    validate(json.loads(SHIPPED.read_text()), "md_tree/1")
    result = cli("diagnose", "--train-error", "0", "--mode-connectivity-peak", "-20", "--hessian-t", "7.5", "-f", "json")
    assert result.exit_code == 0, result.output
    diagnosis = json.loads(result.stdout)
    validate(diagnosis)
    assert any(answer["confidence"] is None for answer in diagnosis["answers"])  # a leaf no training row reached
    table, tree = tmp_path / "population.csv", tmp_path / "tree.json"
    synthetic_population(table, 0)
    assert cli("diagnose", "--fit", table, "-o", tree, "-q").exit_code == 0
    validate(json.loads(tree.read_text()), "md_tree/1")
    broken = copy.deepcopy(diagnosis)
    broken["answers"][0]["path"][0]["went"] = "<"
    assert errors(broken, "diagnosis/1")
    broken = json.loads(SHIPPED.read_text())
    broken["questions"][0]["root"]["le"]["extra"] = 1
    assert errors(broken, "md_tree/1")
