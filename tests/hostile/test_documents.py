"""Saved documents, options and outputs under hostile input (issue 14 items 3, 4, 11, 13, 14, 15, 16).

Malformed reports and schedules are exit 2 (never 1, which the gate's callers
read as "rule violated"); nonsense numbers are refused; every string from a
checkpoint or report is escaped for where it goes.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from fractions import Fraction

import pytest
import torch

from tests.conftest import FIXTURES, assert_user_error
from htsr_cli.allocations.experts import MAX_BETA, ExpertSettings, expert_allocation
from htsr_cli.allocations.learning_rates import MAX_EPOCHS, LrSettings
from htsr_cli.allocations.sparsity import SparsitySettings, sparsity_plan
from htsr_cli.errors import HtsrError
from htsr_cli.gate import GateConfig, evaluate
from htsr_cli.gate.formats import gate_github, gate_markdown, gate_text
from htsr_cli.gate.junit import gate_junit
from htsr_cli.render.outputs import Column, markdown_code, printable, to_csv, to_markdown
from htsr_cli.render.terminal import terminal_table
from htsr_cli.results.report import Report, load_report
from htsr_cli.settings import AnalyzeSettings, FarmsSettings


@pytest.fixture(scope="module")
def document(tmp_path_factory) -> dict:
    """A real htsr.report/1 document of the trained tiny CNN."""
    from htsr_cli.engine.pipeline import analyze

    return json.loads(analyze(FIXTURES / "tiny-cnn-trained.pth", device="cpu").dumps())


def mutated(document: dict, change) -> dict:
    data = copy.deepcopy(document)
    change(data)
    return data


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- item 11: reports are checked field by field -----------------------------------------------------------

BAD_REPORTS = {
    "alpha is a string": (lambda d: d["layers"][0].update(alpha="abc"), "layer 0: 'alpha' must be a finite number > 1 or null, got 'abc'"),
    "a null layer": (lambda d: d["layers"].__setitem__(1, None), "layer 1: must be an object, got None"),
    "settings null": (lambda d: d.update(settings=None), "'settings' must be an object, got None"),
    "xmin 0": (lambda d: d["layers"][2].update(xmin=0), "layer 2: 'xmin' must be a finite number > 0 or null, got 0"),
    "alpha below 1": (lambda d: d["layers"][0].update(alpha=0.5), "'alpha' must be a finite number > 1 or null, got 0.5"),
    "quality outside its enum": (
        lambda d: d["layers"][0].update(quality='ok" onload="x'),
        "'quality' must be one of 'ok', 'under-trained', 'over-trained', 'unknown' or null",
    ),
    "status outside its enum": (lambda d: d["layers"][0].update(status="pwned"), "'status' must be one of 'ok', 'skipped'"),
    "shape of strings": (lambda d: d["layers"][0].update(shape=["a"]), "'shape' must be a list of sizes"),
    "boolean params": (lambda d: d["layers"][0].update(params=True), "'params' must be a whole number >= 0, got True"),
    "missing name": (lambda d: d["layers"][0].pop("name"), "layer 0: 'name' is missing"),
    "duplicate names": (lambda d: d["layers"][1].update(name=d["layers"][0]["name"]), "layer 1: the name 'conv1' is used by an earlier layer"),
    "layers not a list": (lambda d: d.update(layers={"a": 1}), "'layers' must be a list"),
    "checkpoint a number": (lambda d: d.update(checkpoint=3), "'checkpoint' must be a string, got 3"),
    "device with escape codes": (lambda d: d["settings"].update(device="cpu\x1b[2J"), "settings: 'device' must be a short identifier"),
    "unknown xmin method": (lambda d: d["settings"].update(xmin="magic"), "settings: 'xmin' must be one of 'ks', 'median', 'peak'"),
    "farms settings of the wrong type": (lambda d: d["settings"].update(farms={"window": "x", "q": 1, "steps": 2}), "settings.farms: 'window' must be a whole number"),
    "seconds a string": (lambda d: d["summary"].update(seconds="1s"), "summary: 'seconds' must be a finite number >= 0"),
    "quality counts of strings": (lambda d: d["summary"]["quality_counts"].update(ok="6"), "summary.quality_counts: 'ok' must be a whole number"),
    "deep nesting inside a layer": (lambda d: d["layers"][0].update(shape=json.loads(nested(50))), "'shape' must be a list of sizes"),
    "wrong schema": (lambda d: d.update(schema="htsr.report/2"), "not an htsr.report/1 report (schema is 'htsr.report/2')"),
}


@pytest.mark.parametrize("case", BAD_REPORTS)
def test_malformed_reports_are_exit_2_with_the_field_named(case, document, tmp_path, cli):
    change, detail = BAD_REPORTS[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(mutated(document, change)))
    for command in (["gate", path], ["compare", path, path], ["report", path, "-o", tmp_path / "r.html"]):
        line = assert_user_error(cli(*command))
        assert line.startswith(f"htsr: error: {path}") and detail in line, line
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        (nested(100_000), "JSON nested too deeply"),
        ('{"schema": "htsr.report/1", "layers": [{"alpha": NaN}]}', "'checkpoint' is missing"),
        ("\xff\xfe", "not UTF-8 text"),
        ("{", "not valid JSON"),
        ("1" * 5000, "not valid JSON"),
    ],
)
def test_unparseable_reports(text, detail, tmp_path, cli):
    path = tmp_path / "r.json"
    path.write_bytes(text.encode("latin-1"))
    assert_user_error(cli("gate", path), detail)


def test_non_finite_numbers_in_a_report_are_refused(document, tmp_path):
    path = tmp_path / "r.json"
    data = json.dumps(mutated(document, lambda d: d["layers"][0].update(alpha=1e999)))
    path.write_text(data.replace("Infinity", "1e999"))
    with pytest.raises(HtsrError, match=r"'alpha' must be a finite number > 1 or null, got inf"):
        load_report(path)


def test_a_valid_report_round_trips(document):
    assert Report.from_json(document).to_json() == document


def test_schedules_are_checked_when_loaded_into_tempbalance(tmp_path):
    from htsr_cli.allocations.tempbalance import TempBalance

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    good = {
        "schema": "htsr.lr_schedule/1",
        "settings": {"base_lr": 0.1, "map": "linear", "unit": "layer", "min_ratio": 0.5, "max_ratio": 1.5,
                     "analysis": {"xmin": "median"}},
        "layers": [{"name": "0", "kind": "linear", "factor": 1.25}],
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(good))
    assert TempBalance.from_schedule(model, path).factors == {"0": 1.25}
    for change, detail in (
        (lambda d: d["layers"].append(None), "layer 1: must be an object, got None"),
        (lambda d: d["layers"][0].update(factor="abc"), "layer 0: 'factor' must be a finite number > 0, got 'abc'"),
        (lambda d: d["layers"][0].update(factor=-1), "'factor' must be a finite number > 0, got -1"),
        (lambda d: d.update(settings=None), "'settings' must be an object, got None"),
        (lambda d: d["settings"].update(base_lr=float("inf")), "'base_lr' must be a finite number > 0, got inf"),
        (lambda d: d["settings"].update(map="cubic"), "map='cubic': must be one of"),
        (lambda d: d.update(schema="other"), "not an htsr.lr_schedule/1 file"),
    ):
        path.write_text(json.dumps(mutated(good, change)).replace("Infinity", "1e999"))
        with pytest.raises(HtsrError) as caught:
            TempBalance.from_schedule(model, path)
        assert detail in str(caught.value), str(caught.value)
    (tmp_path / "s.yaml").write_text("a: [" * 50_000)
    with pytest.raises(HtsrError, match="not valid YAML"):
        TempBalance.from_schedule(model, tmp_path / "s.yaml")


def test_tempbalance_on_a_model_without_parameters():
    from htsr_cli.allocations.tempbalance import TempBalance

    with pytest.raises(HtsrError, match="^ReLU has no parameters: there are no learning rates to balance$"):
        TempBalance(torch.nn.ReLU())


def test_spectra_files_are_checked(document, tmp_path, cli):
    from safetensors.torch import save_file

    report = tmp_path / "run.json"
    report.write_text(json.dumps(document))
    layers = {layer["name"]: layer["num_evals"] for layer in document["layers"]}
    tensors = {f"esd/{name}": torch.ones(count, dtype=torch.float64) for name, count in layers.items()}
    tensors["esd/conv1"] = torch.full((layers["conv1"],), float("nan"), dtype=torch.float64)
    save_file(tensors, tmp_path / "run.spectra.safetensors", metadata={"schema": "htsr.spectra/1"})
    assert_user_error(cli("report", report, "-o", tmp_path / "r.html"), "'esd/conv1' is not a finite 1-D spectrum")


# --- items 3 and 4: the gate's thresholds and empty checks ------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "detail"),
    [
        (["--alpha-min", "nan"], "alpha_min must be a finite number (or -inf for no bound), got nan"),
        (["--alpha-max", "nan"], "alpha_max must be a finite number (or inf for no bound), got nan"),
        (["--alpha-min", "inf"], "alpha_min must be a finite number (or -inf for no bound), got inf"),
        (["--alpha-max", "-inf"], "alpha_max must be a finite number (or inf for no bound), got -inf"),
        (["--mean-alpha-max", "inf"], "mean_alpha_max must be a finite number, got inf"),
        (["--max-alpha-drift", "nan"], "max_alpha_drift must be a finite number, got nan"),
        (["--max-flagged", "nan"], "--max-flagged must be a whole number of layers"),
    ],
)
def test_non_finite_gate_thresholds_are_exit_2(flags, detail, document, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(document))
    extra = ["--baseline", path] if "--max-alpha-drift" in flags else []
    assert_user_error(cli("gate", path, *flags, *extra), detail)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_thresholds_in_toml(value, document, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(f"[tool.htsr.gate]\nmean_alpha_max = {value}\n")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(document))
    assert_user_error(cli("gate", path), "mean_alpha_max must be a finite number")


def test_infinite_band_ends_mean_no_bound(document):
    report = Report.from_json(document)
    assert evaluate(report, GateConfig(alpha_min=-math.inf, alpha_max=math.inf)).passed
    assert evaluate(report, GateConfig(alpha_min=2.0, alpha_max=math.inf, max_flagged=0)).passed


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(layers=[]),
        lambda d: [layer.update(alpha=None, status="fit-failed", quality="unknown") for layer in d["layers"]],
        lambda d: [layer.update(alpha=None, status="failed", reason="non-finite weights") for layer in d["layers"]],
    ],
    ids=["no layers", "all fits failed", "all NaN"],
)
def test_zero_layers_checked_fails_unless_allowed(change, document, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(mutated(document, change)))
    failed = cli("gate", path)
    assert failed.exit_code == 1
    assert "no layer has a value of alpha to check" in failed.stdout
    assert "set allow_empty = true (or --allow-empty)" in failed.stdout
    assert cli("gate", path, "--allow-empty").exit_code == 0
    (tmp_path / "pyproject.toml").write_text("[tool.htsr.gate]\nalpha_max = 6.0\nallow_empty = true\n")
    allowed = cli("gate", path)
    assert allowed.exit_code == 0 and "passed because allow_empty = true" in allowed.stdout
    (tmp_path / "pyproject.toml").write_text("[tool.htsr.gate]\nallow_empty = 1\n")
    assert_user_error(cli("gate", path), "'allow_empty' must be true or false, got 1")


# --- items 13, 14, 15: options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda: LrSettings(float("inf")), "base_lr=inf: must be a positive finite number"),
        (lambda: LrSettings(float("nan")), "base_lr=nan: must be a positive finite number"),
        (lambda: LrSettings(0.1, max_ratio=float("inf")), "min_ratio=0.5: must be positive and at most the max ratio (inf), which is finite"),
        (lambda: LrSettings(0.1, epochs=100_000_000), f"epochs=100000000: must be in [1, {MAX_EPOCHS}]"),
        (lambda: LrSettings(0.1, epochs=2.5), "epochs=2.5: must be a whole number"),
        (lambda: AnalyzeSettings(conv_scale=float("inf")), "conv_scale=inf: must be in [1e-06, 1e+06]"),
        (lambda: AnalyzeSettings(conv_scale=1e-320), "conv_scale=1e-320: must be in [1e-06, 1e+06]"),
        (lambda: AnalyzeSettings(conv_scale=float("nan")), "conv_scale=nan: must be in"),
        (lambda: AnalyzeSettings(min_evals=float("nan")), "min_evals=nan: must be a whole number"),
        (lambda: AnalyzeSettings(layers=3), "layers=3: must be a regular expression (a string)"),
        (lambda: FarmsSettings(q=float("inf")), "q=inf: must be a window aspect ratio in [0.001, 1000]"),
        (lambda: FarmsSettings(window=2.5), "window=2.5: must be a whole number"),
        (lambda: ExpertSettings(beta=700), f"beta=700: must be a number in [-{MAX_BETA:g}, {MAX_BETA:g}]"),
        (lambda: ExpertSettings(beta=-1000), "beta=-1000: must be a number in [-100, 100]"),
        (lambda: ExpertSettings(beta=float("nan")), "beta=nan: must be a number in"),
    ],
)
def test_nonsense_options_are_refused(make, detail):
    with pytest.raises(HtsrError) as caught:
        make()
    assert detail in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    "args",
    [
        ["analyze", FIXTURES / "tiny-cnn-trained.pth", "--farms", "--farms-q", "inf"],
        ["analyze", FIXTURES / "tiny-cnn-trained.pth", "--conv-scale", "1e-320"],
        ["lr-schedule", "export", FIXTURES / "tiny-cnn-trained.pth", "--base-lr", "inf"],
        ["lr-schedule", "export", FIXTURES / "tiny-cnn-trained.pth", "--base-lr", "0.1", "--epochs", "100000000"],
        ["allocate", "experts", FIXTURES / "tiny-llama", "--beta", "700"],
    ],
)
def test_nonsense_options_on_the_command_line(args, cli):
    assert_user_error(cli(*args))


def exact_allocation(scores: list[float], total: int, beta: int) -> list[int]:
    """Largest remainder on exact quotas T s^beta / sum s^beta, then zeros raised to one from the
    block most above its quota (algorithms.md section 9)."""
    weights = [Fraction(score) ** beta for score in scores]
    quotas = [total * w / sum(weights) for w in weights]
    counts = [math.floor(q) for q in quotas]
    for i in sorted(range(len(scores)), key=lambda i: counts[i] - quotas[i])[: total - sum(counts)]:
        counts[i] += 1
    for i, count in enumerate(counts):
        if count == 0:
            donor = max((j for j in range(len(counts)) if counts[j] > 1), key=lambda j: counts[j] - quotas[j])
            counts[donor] -= 1
            counts[i] = 1
    return counts


def test_expert_rounding_is_exact_for_huge_totals_and_extreme_betas():
    scores = [3.0, 4.0, 5.0, 6.5]
    for total in (4, 10, 10**20, 10**20 + 7):
        for beta in (-MAX_BETA, -1000 / 10, -2.5, 0.0, 2.5, MAX_BETA):
            counts = expert_allocation(scores, total, beta)
            assert sum(counts) == total and min(counts) >= 1
    # beta 0: equal quotas T/4; 10 = 2.5 each -> floors 2, remainders to the first two
    assert expert_allocation(scores, 10, 0.0) == [3, 3, 2, 2]
    # beta 100 against the documented rule computed with exact powers (integer beta: exact rationals)
    for total in (10, 10**20):
        assert expert_allocation(scores, total, MAX_BETA) == exact_allocation(scores, total, 100)
    with pytest.raises(HtsrError, match="positive finite"):
        expert_allocation([3.0, float("nan")], 4, 2.5)


def test_lr_schedule_epochs_at_the_cap_are_bounded(tmp_path, cli):
    result = cli("lr-schedule", "export", FIXTURES / "tiny-cnn-trained.pth", "--base-lr", "0.1",
                 "--epochs", str(MAX_EPOCHS), "-f", "csv", "-o", tmp_path / "s.csv", "--quiet")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO((tmp_path / "s.csv").read_text())))
    assert len(rows[0]) == 8 + MAX_EPOCHS and len(rows) == 1 + 9


def test_no_clip_sparsity_above_one_is_marked_and_warned(document, cli):
    report = Report.from_json(document)
    plan = sparsity_plan(report, SparsitySettings(0.95, epsilon=0.9, granularity="matrix", clip=False))
    over = [entry for entry in plan["layers"] if entry["sparsity"] is not None and entry["sparsity"] > 1]
    assert over and all(entry["note"] == "sparsity above 1 (--no-clip): cannot be applied as is" for entry in over)
    assert plan["summary"]["above_one"] == len(over)
    total = sum(e["params"] for e in plan["layers"] if e["sparsity"] is not None)
    removed = sum(e["params"] * e["sparsity"] for e in plan["layers"] if e["sparsity"] is not None)
    assert removed / total == pytest.approx(0.95)  # the reference's (unclipped) allocation, marked not altered
    result = cli("allocate", "sparsity", FIXTURES / "tiny-cnn-trained.pth", "--target", "0.95", "--epsilon", "0.9",
                 "--granularity", "matrix", "--no-clip", "-f", "json")
    assert result.exit_code == 0
    assert f"warning: {len(over)} matrices get a sparsity above 1" in result.stderr


# --- item 16: every checkpoint-controlled string is escaped for where it goes ------------------------------

HOSTILE = "evil\x1b]0;pwned\x07\x1b[31mred\n::error::forged\x00\u202ebidi"


def test_printable_escapes_every_control_and_invisible_character():
    assert printable(HOSTILE) == "evil\\x1b]0;pwned\\x07\\x1b[31mred\\x0a::error::forged\\x00\\u202ebidi"
    assert printable("\udcff \ufffe é 中") == "\\udcff \\ufffe é 中"
    assert printable("a\nb", keep_newlines=True) == "a\nb"


def test_csv_cells_are_one_line_and_never_formulas():
    rows = [{"name": "=HYPERLINK(\"http://x\")"}, {"name": "+1"}, {"name": "-cmd"}, {"name": "@SUM(A1)"},
            {"name": "\tx"}, {"name": "a\nb"}, {"name": -1.5}]
    text = to_csv([Column("name", "name")], rows)
    assert len(text.splitlines()) == 1 + len(rows)  # no record spans two lines
    cells = [row[0] for row in csv.reader(io.StringIO(text))][1:]
    assert cells == ["'=HYPERLINK(\"http://x\")", "'+1", "'-cmd", "'@SUM(A1)", "\\x09x", "a\\x0ab", "-1.5"]


def test_markdown_cells_and_code_spans():
    table = to_markdown([Column("name", "name", justify="left")], [{"name": "a|b<img src=x>\n## heading"}])
    assert table.splitlines()[2] == "| a\\|b&lt;img src=x&gt;\\x0a## heading |"
    assert markdown_code("x`y") == "``x`y``" and markdown_code("`") == "`` ` ``"


def test_rich_titles_are_text_not_markup():
    from rich.console import Console

    buffer = io.StringIO()
    table = terminal_table([Column("name", "layer")], [{"name": HOSTILE}], 300, title="htsr: model[/]x.pth", notes=["[bold]c"],
                           summary="[red]s")
    Console(file=buffer, width=300, force_terminal=True).print(table)
    output = buffer.getvalue()
    assert "model[/]x.pth" in output and "[bold]c" in output and "[red]s" in output
    assert "\x07" not in output and "\x1b]" not in output and "::error::forged" in output


def hostile_report(document: dict) -> Report:
    def change(data):
        data["checkpoint"] = "ckpt\n::error::x"
        data["layers"][0]["name"] = HOSTILE
        data["layers"][0]["alpha"] = 9.0
    return Report.from_json(mutated(document, change))


def test_gate_outputs_escape_hostile_names(document):
    from rich.console import Console

    result = evaluate(hostile_report(document), GateConfig(alpha_max=6.0))
    github = gate_github(result)
    assert all(line.startswith(("::error ", "::warning ", "htsr gate ")) for line in github.splitlines())
    assert "\x1b" not in github and "\x00" not in github
    buffer = io.StringIO()
    Console(file=buffer, width=300).print(gate_text(result))
    for line in buffer.getvalue().splitlines():
        assert not line.startswith("::"), line
    assert "\x1b" not in buffer.getvalue()
    junit = gate_junit(result)
    ET.fromstring(junit.split("?>", 1)[1])  # well-formed although the name held ESC, BEL and NUL
    assert "\\x1b]0;pwned" in junit
    markdown = gate_markdown(result)
    assert "\n::error::" not in markdown and "`ckpt\\x0a::error::x`" in markdown


def test_analyze_outputs_escape_hostile_names(tmp_path, cli):
    torch.manual_seed(0)
    path = tmp_path / "m.pth"
    torch.save({"=cmd|x.weight": torch.randn(32, 32), f"{HOSTILE}.weight": torch.randn(32, 32)}, path)
    table = cli("analyze", path)
    assert table.exit_code == 0 and "\x1b" not in table.stdout and "\x07" not in table.stdout
    rows = list(csv.DictReader(io.StringIO(cli("analyze", path, "-f", "csv").stdout)))
    assert [row["name"] for row in rows] == ["'=cmd|x", printable(HOSTILE)]
    markdown = cli("analyze", path, "-f", "markdown").stdout
    assert "\x1b" not in markdown and "\n::error::" not in markdown
    assert json.loads(cli("analyze", path, "-f", "json").stdout)["layers"][1]["name"] == HOSTILE  # JSON keeps the truth


def test_error_messages_are_one_escaped_line(tmp_path, cli):
    name = tmp_path / "bad\n::error::x\x1b[31m.pth"
    line = assert_user_error(cli("analyze", name))
    assert line == f"htsr: error: {printable(str(name))}: no such file or directory"
