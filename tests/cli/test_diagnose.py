"""`htsr diagnose`: features in, the MD tree's answers out (table, JSON, CSV); --fit; every bad input is exit 2."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from tests.conftest import assert_user_error
from htsr_cli.diagnosis.md_tree import SHIPPED
from htsr_cli.diagnosis.questions import QUESTIONS
from tests.diagnosis.dataset import COLUMNS, synthetic_population

FLAGS = ["--train-error", "40.5", "--mode-connectivity-peak", "-34.9", "--hessian-t", "5.3"]


def test_flags_give_every_answer_its_path_and_confidence(cli):
    result = cli("diagnose", *FLAGS)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "large: temperature too large: batch size too small" in out
    assert "width: model too small" in out
    assert "training configurations on this leaf agree" in out
    assert "train_error" in out and "40.5000" in out and "mode_connectivity_peak" in out and "-34.9000" in out
    assert "Tree: fitted on dataframe_normal_public.csv (1690 rows;" in out


def test_json_output_reads_features_from_a_file_and_flags_win(cli, tmp_path):
    features = tmp_path / "features.json"
    features.write_text(json.dumps({"train_error": 0.0, "mode_connectivity_peak": -34.9, "hessian_t": 5.3, "CKA": 0.4}))
    result = cli("diagnose", "--features", features, "--train-error", "40.5", "-f", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["schema"] == "htsr.diagnosis/1"
    assert document["features"] == {"train_error": 40.5, "mode_connectivity_peak": -34.9, "hessian_t": 5.3}
    temperature = document["answers"][0]
    assert temperature["question"] == "temperature" and temperature["diagnosis"] == "large"
    assert [step["went"] for step in temperature["path"]] == [">", "<=", "<="]
    assert temperature["confidence"] == temperature["counts"]["large"] / temperature["support"]


def test_fit_writes_a_tree_that_diagnose_then_uses(cli, tmp_path):
    table = tmp_path / "population.csv"
    synthetic_population(table, 0)
    tree = tmp_path / "tree.json"
    result = cli("diagnose", "--fit", table, "-o", tree, "--data-min-width", "0")
    assert result.exit_code == 0, result.output
    document = json.loads(tree.read_text())
    assert document["schema"] == "htsr.md_tree/1" and document["source"]["table"] == "population.csv"
    assert document["source"]["rows"] == 36 and "width >= 0" in document["source"]["protocol"]
    assert [question["rows"] for question in document["questions"]] == [33, 36, 36]  # 3 'optimal' rows dropped
    result = cli("diagnose", "--tree", tree, *FLAGS, "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tree"]["table"] == "population.csv"


def test_fit_can_grow_a_free_cart_tree_on_the_same_features(cli, tmp_path):
    table = tmp_path / "population.csv"
    synthetic_population(table, 0)
    tree = tmp_path / "cart.json"
    result = cli("diagnose", "--fit", table, "--method", "cart", "--max-depth", "2", "-o", tree)
    assert result.exit_code == 0, result.output
    document = json.loads(tree.read_text())
    assert "CART (Gini, depth <= 2)" in document["source"]["protocol"]
    temperature = document["questions"][0]["root"]
    assert set(temperature) == {"feature", "threshold", "le", "gt"}  # it split, and no deeper than 2
    assert all("label" in node for child in (temperature["le"], temperature["gt"])
               for node in ([child] if "label" in child else [child["le"], child["gt"]]))
    result = cli("diagnose", "--tree", tree, *FLAGS, "-f", "json")
    assert result.exit_code == 0, result.output
    assert all(set(answer["counts"]) == set(QUESTIONS[answer["question"]].classes)
               for answer in json.loads(result.stdout)["answers"])


def test_csv_output_is_one_row_per_comparison_with_cells_escaped(cli, tmp_path):
    tree = json.loads(SHIPPED.read_text())
    tree["questions"] = tree["questions"][:1]
    tree["questions"][0]["root"]["feature"] = "=HYPERLINK(1)"
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(tree))
    features = tmp_path / "features.json"
    features.write_text(json.dumps({"=HYPERLINK(1)": 40.5, "mode_connectivity_peak": -34.9, "hessian_t": 5.3}))
    result = cli("diagnose", "--features", features, "--tree", path, "-f", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["feature"] for row in rows] == ["'=HYPERLINK(1)", "mode_connectivity_peak", "hessian_t"]
    assert {row["question"] for row in rows} == {"temperature"} and rows[0]["went"] == ">"


def write_table(path, header, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def good_row() -> dict:
    return {
        "data": 1, "width": 64, "bs": 16, "log_data_amount": 8.5, "log_para_amount": 9.3, "train_error": 3.0,
        "train_loss": 0.1, "test_loss": 1.0, "test_error": 20.0, "mode_connectivity_peak": -5.0, "hessian_t": 6.0,
        "bs_failure": "large", "width_vs_batch": "batch", "data_vs_batch": "data",
    }


@pytest.mark.parametrize(("change", "needles"), [
    ({"drop": "hessian_t"}, ["population.csv: the column 'hessian_t' is missing"]),
    ({"train_error": "abc"}, ["row 2, column 'train_error': 'abc' is not a finite number"]),
    ({"hessian_t": "nan"}, ["row 2, column 'hessian_t': 'nan' is not a finite number"]),
    ({"bs_failure": "huge"}, ["row 2, column 'bs_failure': unknown label 'huge'", "large, optimal, small"]),
])
def test_bad_tables_are_one_line_and_exit_2(cli, tmp_path, change, needles):
    header = [name for name in COLUMNS if name != change.get("drop")]
    bad = {**good_row(), **{key: value for key, value in change.items() if key != "drop"}}
    table = tmp_path / "population.csv"
    write_table(table, header, [[good_row()[name] for name in header], [bad[name] for name in header]])
    assert_user_error(cli("diagnose", "--fit", table), *needles)


def test_empty_tables_are_refused(cli, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_user_error(cli("diagnose", "--fit", empty), "empty.csv: the table is empty")
    header_only = tmp_path / "header.csv"
    write_table(header_only, COLUMNS, [])
    assert_user_error(cli("diagnose", "--fit", header_only), "header.csv: the table has no rows")
    only_optimal = tmp_path / "optimal.csv"
    write_table(only_optimal, ["train_error", "mode_connectivity_peak", "hessian_t", "bs_failure"], [[1, -2, 6, "optimal"]])
    assert_user_error(cli("diagnose", "--fit", only_optimal), "no row has a 'bs_failure' class")
    no_labels = tmp_path / "unlabelled.csv"
    write_table(no_labels, ["train_error"], [[1]])
    assert_user_error(cli("diagnose", "--fit", no_labels), "no label column to fit on")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("train_error,bs_failure\n1,large,extra\n")
    assert_user_error(cli("diagnose", "--fit", ragged), "row 1 has 3 cells, the header 2")


def shipped_with(change) -> dict:
    tree = json.loads(SHIPPED.read_text())
    change(tree)
    return tree


@pytest.mark.parametrize(("tree", "needle"), [
    (shipped_with(lambda tree: tree.update(schema="htsr.md_tree/2")), "'schema' must be 'htsr.md_tree/1'"),
    (shipped_with(lambda tree: tree.update(questions=[])), "'questions' must be a non-empty list"),
    (shipped_with(lambda tree: tree["questions"][0].update(name="colour")), "unknown question 'colour'"),
    (shipped_with(lambda tree: tree["questions"][0]["root"].update(threshold="0.5")), "'threshold' must be a finite number"),
    (shipped_with(lambda tree: tree["questions"][0]["root"].update(threshold=10**400)), "'threshold' must be a finite number"),
    (shipped_with(lambda tree: tree["questions"][0]["root"].update(surprise=1)), "unexpected field 'surprise'"),
    (shipped_with(lambda tree: tree["questions"][0]["root"]["le"].update(label="width")), "label 'width' is not a class of temperature"),
    (shipped_with(lambda tree: tree["questions"][0]["root"].pop("gt")), "'gt' is missing"),
    (shipped_with(lambda tree: tree["source"].pop("fitted_on")), "source: 'fitted_on' is missing"),
    (shipped_with(lambda tree: tree["questions"].append(tree["questions"][0])), "question 'temperature' appears twice"),
])
def test_a_tree_file_with_a_bad_schema_is_refused(cli, tmp_path, tree, needle):
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(tree))
    assert_user_error(cli("diagnose", "--tree", path, *FLAGS), "tree.json", needle)


def test_a_tree_nested_absurdly_deep_is_refused(cli, tmp_path):
    node = {"label": "large", "counts": {}}
    for _ in range(40):
        node = {"feature": "train_error", "threshold": 0.0, "le": node, "gt": {"label": "small", "counts": {}}}
    tree = shipped_with(lambda tree: tree["questions"][0].update(root=node))
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(tree))
    assert_user_error(cli("diagnose", "--tree", path, *FLAGS), "nested deeper than 32 splits")


def test_bad_features_and_option_mixes_are_one_line_and_exit_2(cli, tmp_path):
    assert_user_error(cli("diagnose"), "give the model's features")
    assert_user_error(cli("diagnose", "--train-error", "3"), "the diagnosis needs mode_connectivity_peak, hessian_t")
    assert_user_error(cli("diagnose", *FLAGS[:4], "--hessian-t", "nan"), "--hessian-t must be a finite number")
    features = tmp_path / "features.json"
    features.write_text(json.dumps({"train_error": "3"}))
    assert_user_error(cli("diagnose", "--features", features), "feature 'train_error' must be a finite number")
    features.write_text('{"train_error": 1' + "0" * 400 + "}")
    assert_user_error(cli("diagnose", "--features", features), "feature 'train_error' must be a finite number")
    features.write_text("[1, 2]")
    assert_user_error(cli("diagnose", "--features", features), "must be an object")
    features.write_text("{")
    assert_user_error(cli("diagnose", "--features", features), "not valid JSON")
    assert_user_error(cli("diagnose", "--features", tmp_path / "missing.json"), "missing.json: no such file")
    assert_user_error(cli("diagnose", "--fit", tmp_path / "t.csv", "--train-error", "3"), "--train-error does not apply")
    assert_user_error(cli("diagnose", *FLAGS, "--data-min-width", "8"), "--data-min-width applies only with --fit")
    assert_user_error(cli("diagnose", *FLAGS, "--method", "cart"), "--method applies only with --fit")
    assert_user_error(cli("diagnose", "--fit", tmp_path / "t.csv", "--max-depth", "3"), "--max-depth applies only with --method cart")


def test_diagnose_does_not_import_torch():
    code = (
        "import sys\n"
        "from htsr_cli.cli.app import app\n"
        f"code = app(['diagnose', *{FLAGS!r}, '-f', 'json'], standalone_mode=False)\n"
        "assert code in (0, None), code\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "False"
