"""The benchmark suite's pure parts: partition, estimate arithmetic, alpha comparisons, layouts, rendering.

No timing here: `make bench` measures, these tests check the arithmetic and the
bookkeeping it reports with.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))

from accuracy import alpha_differences, float32_alpha_shifts, guard_summary, read_fits, report_facts  # noqa: E402
from checkpoints import LlamaShape, MoeShape, model_layout, write_hf_directory, write_small_matrices  # noqa: E402
from estimate import distributed_estimate, lpt_partition, shape_class  # noqa: E402
from roofline import farms_roofline, roofline  # noqa: E402
from render import (  # noqa: E402
    FARMS_LOOP,
    FLOOR,
    HTSR,
    HTSR_FARMS,
    HTSR_F32,
    HTSR_F64,
    WEIGHTWATCHER,
    display_command,
    farms_rows,
    render_benchmarks,
    roofline_rows,
    target_results,
)
from measure import parse_profile  # noqa: E402
from run import accuracy_records, merge_entry  # noqa: E402

from htsr_cli.spectra.fit import fit_power_law  # noqa: E402


# --- the LPT partition and the estimate ---------------------------------------------------------


def test_lpt_partition_hand_example():
    # Longest first onto the least-loaded rank: 3 -> r0, 2 -> r1, 2 -> r1 (2 < 3), 1 -> r0 (3 < 4).
    assert lpt_partition([3.0, 2.0, 2.0, 1.0], ranks=2) == [[0, 3], [1, 2]]


def test_lpt_partition_more_ranks_than_matrices_leaves_ranks_empty():
    assert lpt_partition([5.0, 1.0], ranks=4) == [[0], [1], [], []]


def test_lpt_partition_rejects_no_ranks():
    with pytest.raises(ValueError, match="ranks must be at least 1"):
        lpt_partition([1.0], ranks=0)


def _makespan(costs: list[float], parts: list[list[int]]) -> float:
    return max((sum(costs[index] for index in part) for part in parts), default=0.0)


def test_lpt_partition_properties_on_random_costs():
    """Every matrix on exactly one rank, within the greedy bound sum/m + (1 - 1/m) max."""
    generator = random.Random(0)
    for _ in range(300):
        ranks = generator.randint(1, 9)
        costs = [generator.choice([generator.random(), generator.uniform(1, 100)]) for _ in range(generator.randint(0, 60))]
        parts = lpt_partition(costs, ranks)
        assert len(parts) == ranks
        assert sorted(index for part in parts for index in part) == list(range(len(costs)))
        bound = sum(costs) / ranks + (1 - 1 / ranks) * max(costs, default=0.0)
        assert _makespan(costs, parts) <= bound + 1e-9


def test_lpt_partition_within_grahams_bound_of_the_optimum():
    """LPT's makespan is at most (4/3 - 1/(3m)) x the best partition's (found here by brute force)."""
    generator = random.Random(1)
    for _ in range(60):
        ranks = generator.randint(2, 3)
        costs = [generator.uniform(1, 10) for _ in range(generator.randint(1, 7))]
        best = min(
            _makespan(costs, [[i for i, r in enumerate(assignment) if r == rank] for rank in range(ranks)])
            for assignment in itertools.product(range(ranks), repeat=len(costs))
        )
        assert _makespan(costs, lpt_partition(costs, ranks)) <= (4 / 3 - 1 / (3 * ranks)) * best + 1e-9


def test_shape_class_ignores_orientation():
    assert shape_class((2, 4)) == shape_class((4, 2)) == "4x2"


def test_distributed_estimate_hand_computed():
    layout = [("a.weight", (4, 2)), ("b.weight", (2, 4)), ("c.weight", (8, 8))]
    result = distributed_estimate(
        layout, {"4x2": 1.0, "8x8": 3.0}, ranks=2, read_bytes_per_s=16.0, startup_s=0.5, bytes_per_value=2
    )
    # bytes: a 16, b 16, c 128. LPT: c -> rank 0 (3 s); a -> rank 1; b -> rank 1 (1 < 3).
    assert result["rank_compute_s"] == [3.0, 2.0]
    assert result["rank_read_s"] == [128 / 16, 32 / 16]
    assert result["estimate_s"] == pytest.approx(0.5 + 3.0 + 8.0)
    assert result["one_rank_s"] == pytest.approx(0.5 + 5.0 + 160 / 16)
    assert result["imbalance"] == pytest.approx(3.0 / 2.5)
    assert (result["matrices"], result["bytes"]) == (3, 160)


def test_distributed_estimate_needs_a_time_for_every_class():
    with pytest.raises(KeyError):
        distributed_estimate([("a.weight", (4, 2))], {}, ranks=1, read_bytes_per_s=1.0, startup_s=0.0)


# --- alpha differences and report facts ----------------------------------------------------------


def test_alpha_differences_hand_computed():
    measured = {"a": (2.0, 1.0), "b": (3.0005, 2.0), "c": (None, None), "d": (4.0, 5.0), "e": (2.5, 1.0)}
    reference = {"a": (2.0001, 1.0), "b": (3.0, 2.1), "c": (2.5, 1.0), "d": (4.0, 5.0)}
    result = alpha_differences(measured, reference)
    assert result["layers"] == 3  # a, b, d: fitted in both
    assert result["max_abs_diff"] == pytest.approx(5e-4)
    assert result["median_abs_diff"] == pytest.approx(1e-4)
    assert result["within_tolerance"] == 3
    assert result["xmin_changed"] == 1  # b: 2.0 -> 2.1
    assert result["fitted_in_one_only"] == 2  # c fitted only in the reference, e only in the measured run


def test_alpha_differences_with_nothing_in_common():
    result = alpha_differences({"a": (None, None)}, {"a": (None, None)})
    assert (result["layers"], result["max_abs_diff"], result["median_abs_diff"]) == (0, None, None)


def _report(layers: list[dict], **settings) -> dict:
    return {"schema": "htsr.report/1", "settings": {"xmin": "ks", "device": "cpu", **settings}, "layers": layers}


def test_report_facts_reads_precision_fields_and_redone_layers():
    report = _report(
        [
            {"name": "q", "tensor": "q.weight", "alpha": 2.0, "eigensolver_redone": True},
            {"name": "k", "tensor": "k.weight", "alpha": 3.0, "eigensolver_redone": False},
            {"name": "n", "tensor": "n.weight", "alpha": None},
        ],
        precision="float32", gram_precision="float32", eigensolver_precision="float32",
    )
    facts = report_facts(report)
    assert facts["settings"] == {"precision": "float32", "gram_precision": "float32", "eigensolver_precision": "float32", "device": "cpu"}
    assert facts["redone"] == ["q.weight"]


def test_report_facts_never_invents_fields_an_older_htsr_lacks():
    facts = report_facts(_report([{"name": "q", "tensor": "q.weight", "alpha": 2.0}], precision="float64"))
    assert facts == {"settings": {"precision": "float64", "device": "cpu"}, "redone": None}


def test_read_fits_by_tensor_or_module_name():
    report = _report([{"name": "q", "tensor": "q.weight", "alpha": 2.0, "xmin": 0.5}])
    assert read_fits(report) == {"q.weight": (2.0, 0.5)}
    assert read_fits(report, "name") == {"q": (2.0, 0.5)}


def test_guard_summary_sorts_redos_into_needed_unneeded_missed():
    shifts = {
        "a": {"float32": 2.0, "float64": 2.0005},  # within 1e-3: no redo needed
        "b": {"float32": 15.7, "float64": 57.2},  # needed
        "c": {"float32": None, "float64": 3.0},  # float32 lost the fit: needed
        "d": {"float32": 4.0, "float64": 4.002},  # needed (2e-3)
    }
    summary = guard_summary(["a", "b", "c"], shifts)
    assert summary["needed"] == ["b", "c", "d"]
    assert summary["unneeded"] == ["a"]
    assert summary["missed"] == ["d"]
    assert summary["float32_max_abs_diff"] == pytest.approx(57.2 - 15.7)
    not_recorded = guard_summary(None, shifts)
    assert not_recorded["recorded"] is False and "redone" not in not_recorded


def test_float32_alpha_shifts_matches_htsr_fit_on_a_known_spectrum(tmp_path):
    # W = diag(sqrt(x)) has exactly the eigenvalues x (W^T W = diag(x)): a planted Pareto tail.
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(400, generator=generator, dtype=torch.float64).clamp_min(1e-3) ** (-1 / 1.5)
    weight = torch.diag(x.sqrt())
    save_file({"layer.weight": weight.float()}, tmp_path / "w.safetensors")
    shifts = float32_alpha_shifts(tmp_path / "w.safetensors")
    # The file holds float32 values: the exact eigenvalues are their squares.
    expected = fit_power_law(torch.sort(weight.float().double().diagonal() ** 2).values, "ks").alpha
    assert list(shifts) == ["layer.weight"]
    assert shifts["layer.weight"]["float64"] == pytest.approx(expected, abs=1e-9)
    assert shifts["layer.weight"]["float32"] == pytest.approx(expected, abs=1e-4)


# --- accuracy records and merging runs --------------------------------------------------------------


def _write(path: Path, document: dict) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def _row(tool: str, device: str, report: str | None, walls=(1.0,), **extra) -> dict:
    runs = [{"wall_s": wall, "peak_rss_mb": 100.0} for wall in walls]
    return {"tool": tool, "device": device, "command": ["htsr"], "report": report, "runs": runs, "error": None, **extra}


def test_accuracy_records_prefer_the_cpu_float64_reference(tmp_path):
    layers = lambda alpha: [{"name": "q", "tensor": "q.weight", "alpha": alpha, "xmin": 1.0}]  # noqa: E731
    rows = [
        _row(HTSR, "cuda", _write(tmp_path / "d.json", _report(layers(2.0004)))),
        _row(HTSR_F64, "cuda", _write(tmp_path / "g.json", _report(layers(2.0002)))),
        _row(HTSR_F64, "cpu", _write(tmp_path / "c.json", _report(layers(2.0)))),
        _row(WEIGHTWATCHER, "cpu", _write(tmp_path / "w.json", {"layers": [{"name": "q", "alpha": 2.1, "xmin": 1.0}]})),
    ]
    records = {(r["tool"], r["device"]): r for r in accuracy_records(rows)}
    assert records[(HTSR, "cuda")]["reference_device"] == "cpu"
    assert records[(HTSR, "cuda")]["max_abs_diff"] == pytest.approx(4e-4)
    assert records[(WEIGHTWATCHER, "cpu")]["reference"] == HTSR_F64
    assert records[(WEIGHTWATCHER, "cpu")]["max_abs_diff"] == pytest.approx(0.1)
    assert set(records) == {(HTSR, "cuda"), (WEIGHTWATCHER, "cpu")}


def _entry(rows: list[dict], **extra) -> dict:
    return {
        "name": "llama-4L", "kind": "llama", "layers": 4, "path": "benchmarks/work/x", "size_mb": 1.0,
        "matrices": 30, "params": 1000, "rows": rows, "error": None, "date": "2026-01-01 00:00 UTC",
        "commands": ["python benchmarks/run.py"], "versions": {"htsr": "0.1.0"}, **extra,
    }


def test_merge_entry_replaces_rows_by_tool_and_device_and_keeps_the_rest(tmp_path):
    old = _entry(
        [_row(HTSR, "cpu", None, walls=(9.0,)), _row(FLOOR, "cpu", None, walls=(8.0,)), _row(HTSR_F64, "cuda", None)],
        accuracy=[{"tool": HTSR_F64, "device": "cuda", "reference": HTSR_F64, "max_abs_diff": 0.0}],
        commands=["python benchmarks/run.py --repeats 3"],
    )
    new = _entry([_row(HTSR, "cpu", None, walls=(5.0,))], commands=["python benchmarks/run.py --tools htsr"])
    merged = merge_entry(old, new)
    walls = {(row["tool"], row["device"]): row["runs"][0]["wall_s"] for row in merged["rows"]}
    assert walls == {(HTSR, "cpu"): 5.0, (FLOOR, "cpu"): 8.0, (HTSR_F64, "cuda"): 1.0}
    assert [row["tool"] for row in merged["rows"]] == [HTSR, HTSR_F64, FLOOR]
    # The report files are gone (another machine): the earlier comparison stays as computed.
    assert merged["accuracy"] == old["accuracy"]
    assert merged["commands"] == ["python benchmarks/run.py --repeats 3", "python benchmarks/run.py --tools htsr"]
    assert [row["date"] for row in merged["rows"] if row["tool"] == FLOOR] == [old["date"]]


def test_merge_entry_that_measures_every_row_again_forgets_the_old_run():
    old = _entry([_row(HTSR, "cpu", None, walls=(9.0,))], command="python benchmarks/run.py --old")
    del old["commands"]  # results written before entries listed their commands
    new = _entry([_row(HTSR, "cpu", None, walls=(5.0,))], commands=["python benchmarks/run.py"])
    merged = merge_entry(old, new)
    assert [row["runs"][0]["wall_s"] for row in merged["rows"]] == [5.0]
    assert merged["commands"] == ["python benchmarks/run.py"]


# --- the --profile line, commands as shown, and the targets --------------------------------------------


def test_parse_profile_reads_every_stage_even_when_the_console_wrapped_it():
    stderr = (
        "profile: read 0.125 s | transfer 14.798 s | solve 28.312 s | fit 7.063 s | farms 0.000 s | \n"
        "wall 36.407 s (read/transfer overlap solve/fit on a loader thread)\n"
    )
    assert parse_profile(stderr) == {
        "read": 0.125, "transfer": 14.798, "solve": 28.312, "fit": 7.063, "farms": 0.0, "wall": 36.407,
    }


def test_parse_profile_without_a_profile_line_says_what_it_got():
    with pytest.raises(ValueError, match="no profile line in the output: htsr: error: boom"):
        parse_profile("htsr: error: boom\n")


def test_display_command_shows_what_a_reader_types():
    root = "/work/main"
    assert display_command(["/tmp/venv0/bin/htsr", "analyze", f"{root}/benchmarks/work/llama", "--quiet"]) == (
        "htsr analyze benchmarks/work/llama --quiet"
    )
    assert display_command([f"{root}/benchmarks/work/ww-venv/bin/python", f"{root}/benchmarks/ww_runner.py", "x"]) == (
        "benchmarks/work/ww-venv/bin/python benchmarks/ww_runner.py x"
    )
    bare = ["/usr/bin/python3", "-c", "import sys; from htsr_cli.cli.app import main; main()", "analyze", "m.pth"]
    assert display_command(bare) == "htsr analyze m.pth"
    assert display_command("python benchmarks/run.py --only 'a|b'") == "python benchmarks/run.py --only 'a|b'"


def _targets(entry: dict) -> dict[tuple[str, str], tuple[str, str]]:
    return {(r["target"], r["device"]): (r["measured"], r["result"]) for r in target_results({entry["name"]: entry})}


def test_targets_for_precision_weightwatcher_and_the_guard():
    probe = {"a.weight": {"float32": 2.0, "float64": 2.0}, "b.weight": {"float32": 9.0, "float64": 5.0}}
    entry = _entry(
        [
            _row(HTSR, "cpu", None, walls=(10.0,)),
            _row(HTSR_F64, "cpu", None, walls=(17.0,)),
            _row(HTSR_F32, "cpu", None, facts={"settings": {"precision": "float32"}, "redone": ["a.weight", "b.weight"]}),
            _row(WEIGHTWATCHER, "cpu", None, walls=(45.0,)),
        ],
        accuracy=[
            {"tool": HTSR, "device": "cpu", "reference": HTSR_F64, "reference_device": "cpu", "layers": 30,
             "max_abs_diff": 4.9e-5, "median_abs_diff": 1e-6, "within_tolerance": 30, "xmin_changed": 0, "fitted_in_one_only": 0},
            {"tool": HTSR_F32, "device": "cpu", "reference": HTSR_F64, "reference_device": "cpu", "layers": 29,
             "max_abs_diff": 1e-7, "median_abs_diff": 1e-8, "within_tolerance": 29, "xmin_changed": 0, "fitted_in_one_only": 1},
        ],
        float32_probe=probe,
    )
    targets = _targets(entry)
    assert targets[("htsr >= 1.6x faster than --precision float64", "cpu")] == ("1.70x", "met")
    assert targets[("htsr >= 4x faster than WeightWatcher 0.7.7", "cpu")] == ("4.50x", "met")
    assert targets[("htsr max abs alpha diff from float64 <= 1e-3", "cpu")] == ("4.9e-05 over 30 layers (vs cpu)", "met")
    measured, result = targets[("--precision float32 max abs alpha diff from float64 <= 1e-3", "cpu")]
    assert result == "**not met**" and measured.endswith("1 fitted in one run only")
    assert targets[("float32 guard redoes no layer it need not", "cpu")] == ("1 of 2 redos unneeded (1 needed)", "**not met**")


def test_guard_target_without_the_redone_field_is_not_measured_not_faked():
    entry = _entry(
        [_row(HTSR, "cpu", None), _row(HTSR_F32, "cpu", None, facts={"settings": {"precision": "float32"}, "redone": None})],
        float32_probe={"a.weight": {"float32": 2.0, "float64": 2.5}},
    )
    assert _targets(entry)[("float32 guard redoes no layer it need not", "cpu")] == (
        "reports record no eigensolver_redone", "not measured",
    )


def test_seven_b_target_applies_on_cuda_only():
    entry = _entry([_row(HTSR, "cuda", None, walls=(14.2, 15.8, 14.9)), _row(HTSR, "cpu", None, walls=(400.0,))], name="llama-7b")
    targets = _targets(entry)
    assert targets[("htsr end to end <= 15 s on one GPU", "cuda")] == ("14.9 s", "met")
    assert ("htsr end to end <= 15 s on one GPU", "cpu") not in targets


def test_render_labels_an_estimate_as_an_estimate_with_its_device():
    record = {
        "model": "llama-h8192", "device": "cpu", "ranks": 8, "date": "2026-01-01 00:00 UTC", "command": "python benchmarks/run.py",
        "versions": {}, "error": None, "classes": [{"class": "8192x8192", "example": [8192, 8192], "count": 160, "seconds": 2.0}],
        "settings": {"precision": "float64"}, "repeats": 1, "read": {"checkpoint": "llama", "bytes": 2e9, "seconds": 1.0, "bytes_per_s": 2e9},
        "matrices": 160, "bytes": 2e10, "startup_s": 5.0, "rank_compute_s": [40.0] * 8, "rank_read_s": [1.25] * 8,
        "estimate_s": 46.25, "one_rank_s": 335.0, "imbalance": 1.0,
    }
    machine = {"slug": "cpu-x", "cpu": "AMD EPYC", "cores": 2, "memory_gib": 23.5, "gpu": None}
    markdown = render_benchmarks([{"schema": "htsr.bench/1", "machine": machine, "checkpoints": {}, "estimates": {"x": record}}])
    assert "an ESTIMATE, not a measurement" in markdown
    assert "| cpu (AMD EPYC) | 8 | 160 | 20.0 | 5.0 | 2.00 | 40.0 | 1.2 | 1.000 | 335.0 | 46.2 |" in markdown


# --- the generated checkpoints are laid out as transformers saves them ---------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        MoeShape(64, 32, 2, 4, experts_per_token=2, heads=4, kv_heads=2, head_dim=16, vocab=100),
        LlamaShape(64, 96, 2, 4, 100, kv_heads=2),
    ],
    ids=["qwen3-moe", "llama-gqa"],
)
def test_model_layout_is_what_save_pretrained_writes(shape):
    model = shape.model_class()(shape.config())
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        with safe_open(Path(directory) / "model.safetensors", framework="pt") as handle:
            saved = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    layout = dict(model_layout(shape))
    assert layout == saved
    if isinstance(shape, MoeShape):  # per-expert 2-D weights, not the fused 3-D parameters held in memory
        assert layout["model.layers.1.mlp.experts.3.gate_proj.weight"] == (32, 64)
        assert layout["model.layers.1.mlp.experts.3.down_proj.weight"] == (64, 32)
        assert not any(key.endswith("gate_up_proj") for key in layout)
    assert math.prod(layout["lm_head.weight"]) == 100 * 64


def test_generated_moe_directory_loads_into_its_model_class_with_every_weight(tmp_path):
    shape = MoeShape(64, 32, 2, 4, experts_per_token=2, heads=4, kv_heads=2, head_dim=16, vocab=100)
    directory = write_hf_directory(tmp_path, shape)
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["Qwen3MoeForCausalLM"]
    model, info = shape.model_class().from_pretrained(directory, output_loading_info=True)
    assert (set(info["missing_keys"]), set(info["unexpected_keys"]), set(info["mismatched_keys"])) == (set(), set(), set())
    assert model.model.layers[1].mlp.experts.gate_up_proj.dtype == torch.bfloat16
    assert not list(tmp_path.glob(".*partial"))


def test_an_older_generated_directory_gets_its_architecture_named(tmp_path):
    shape = LlamaShape(64, 96, 1, 4, 100)
    directory = write_hf_directory(tmp_path, shape)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    del config["architectures"]
    config_path.write_text(json.dumps(config))
    weights = sorted(path.stat().st_mtime_ns for path in directory.glob("*.safetensors"))
    assert write_hf_directory(tmp_path, shape) == directory
    assert json.loads(config_path.read_text())["architectures"] == ["LlamaForCausalLM"]
    assert sorted(path.stat().st_mtime_ns for path in directory.glob("*.safetensors")) == weights


def test_small_matrices_file_holds_every_expert_projection(tmp_path):
    path = write_small_matrices(tmp_path, layers=2, experts=3, hidden=32, intermediate=16)
    with safe_open(path, framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    assert len(shapes) == 2 * 3 * 3
    assert shapes["layers.1.mlp.experts.2.gate_proj.weight"] == (16, 32)
    assert shapes["layers.1.mlp.experts.2.down_proj.weight"] == (32, 16)


def test_speed_targets_of_issue_15_apply_to_llama_shaped_checkpoints_only():
    rows = [_row(HTSR, "cpu", None, walls=(10.0,)), _row(HTSR_F64, "cpu", None), _row(WEIGHTWATCHER, "cpu", None, walls=(30.0,))]
    targets = _targets(_entry(rows, name="all-MiniLM-L6-v2", kind="minilm"))
    assert not any("1.6x" in target for target, _ in targets)
    # Issue 28: WeightWatcher's target holds on every checkpoint where it runs.
    assert targets[("htsr >= 4x faster than WeightWatcher 0.7.7", "cpu")] == ("3.00x", "**not met**")


def test_roofline_counts_triangle_grams_and_tridiagonal_reductions_at_the_nearest_rate():
    rates = {"gemm_gflops": 2.0, "eigvalsh_gflops": {"4": 1.0, "1000": 10.0}}
    # A 10 x 4 matrix: Gram 10 * 4^2 = 160 flops, eigensolve 4/3 * 4^3; a conv of 4 slices of 6 x 3.
    got = roofline({"a.weight": (10, 4), "c.weight": (6, 3, 2, 2)}, rates)
    gram = (160 + 4 * 6 * 9) / 1e9
    eig = (4 / 3 * 64 + 4 * 4 / 3 * 27) / 1e9
    assert got["gram_gflop"] == pytest.approx(gram) and got["eig_gflop"] == pytest.approx(eig)
    assert got["seconds"] == pytest.approx(gram / 2.0 + eig / 1.0)  # n = 4 and n = 3 are nearest 4
    entry = _entry([_row(HTSR, "cpu", None, walls=(4 * got["seconds"],))])
    entry["roofline"] = {"cpu": got}
    (line,) = roofline_rows({"x": entry})
    assert line["fraction"] == pytest.approx(0.25) and line["eigvalsh"] == "4: 1.0, 1000: 10.0"
    assert "float64" not in line  # no float64 GEMM rate measured: no bound for --precision mixed


def test_roofline_bounds_what_float32_grams_gain_when_the_eigensolves_stay_float64():
    rates = {"gemm_gflops": 4.0, "gemm64_gflops": 2.0, "eigvalsh_gflops": {"4": 1.0}}
    got = roofline({"a.weight": (10, 4)}, rates)
    gram, eig = 160 / 1e9, 4 / 3 * 64 / 1e9
    assert got["seconds"] == pytest.approx(gram / 4.0 + eig) and got["seconds_float64"] == pytest.approx(gram / 2.0 + eig)
    entry = _entry([_row(HTSR, "cpu", None)])
    entry["roofline"] = {"cpu": got}
    (line,) = roofline_rows({"x": entry})
    assert line["float64"] == pytest.approx((gram / 2.0 + eig) / (gram / 4.0 + eig))


def test_farms_roofline_counts_the_published_windows_at_their_eigvalsh_rate():
    rates = {"gemm_gflops": 1.0, "eigvalsh_gflops": {"64": 2.0, "2048": 40.0}}
    # algorithms.md section 5: 4096 x 4096 with w = 2000, k = 10 gives 100 windows of 2000 x 2000;
    # a 64-wide conv of 3 x 3 slices with Q = 1 has one 64 x 64 block per slice.
    got = farms_roofline({"w": (4096, 4096), "c": (64, 64, 3, 3)}, rates)
    big, small = 100 * 4 / 3 * 2000**3 / 1e9, 9 * 4 / 3 * 64**3 / 1e9
    assert got["windows"] == 109
    assert got["eig_gflop"] == pytest.approx(big + small)
    assert got["seconds"] == pytest.approx(big / 40.0 + small / 2.0)


def test_farms_table_bounds_the_speedup_over_the_loop_by_the_roofline_with_windows():
    rows = [_row(HTSR_FARMS, "cpu", None, walls=(20.0,)), _row(FARMS_LOOP, "cpu", None, walls=(60.0,))]
    entry = _entry(rows)
    entry["roofline"] = {"cpu": {"seconds": 2.0, "farms": {"windows": 100, "seconds": 13.0}}}
    (line,) = farms_rows({"m": entry})
    assert line["speedup"] == pytest.approx(3.0) and line["windows"] == 100
    assert line["bound"] == pytest.approx(15.0)
    assert line["fraction"] == pytest.approx(0.75) and line["most"] == pytest.approx(4.0)


def test_weightwatcher_gets_stored_moe_experts_as_plain_linear_modules_in_their_dtype(tmp_path):
    from torch import nn

    from ww_runner import plain_module, stored_state

    expert = "model.layers.0.mlp.experts.{}.down_proj.weight"
    save_file({expert.format(0): torch.randn(8, 4).bfloat16(), "model.norm.weight": torch.ones(8).bfloat16()}, tmp_path / "a.safetensors")
    save_file({expert.format(1): torch.randn(8, 4).bfloat16()}, tmp_path / "b.safetensors")
    state = stored_state(str(tmp_path))
    model = plain_module(state)
    linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    # Every stored expert is its own Linear (what WeightWatcher analyses); the norm's scale is kept, not a layer.
    assert linears == {"model.layers.0.mlp.experts.0.down_proj", "model.layers.0.mlp.experts.1.down_proj"}
    assert model.get_submodule("model.layers.0.mlp.experts.1.down_proj").weight.dtype == torch.bfloat16
    assert torch.equal(model.get_submodule("model.norm").weight, state["model.norm.weight"])


def test_weightwatcher_gets_a_state_dict_as_plain_torch_modules():
    from torch import nn

    from ww_runner import plain_module

    state = {
        "conv1.weight": torch.randn(8, 3, 3, 3), "bn1.weight": torch.ones(8), "bn1.bias": torch.zeros(8),
        "bn1.running_mean": torch.zeros(8), "bn1.running_var": torch.ones(8), "bn1.num_batches_tracked": torch.tensor(0),
        "layer1.0.conv2.weight": torch.randn(16, 8, 1, 1), "fc.weight": torch.randn(10, 16), "fc.bias": torch.randn(10),
    }
    model = plain_module(state)
    kinds = {name: type(module) for name, module in model.named_modules() if name}
    assert kinds["conv1"] is nn.Conv2d and kinds["layer1.0.conv2"] is nn.Conv2d and kinds["fc"] is nn.Linear
    assert kinds["bn1"] is nn.BatchNorm2d
    assert torch.equal(model.get_submodule("layer1.0.conv2").weight, state["layer1.0.conv2.weight"])
    assert torch.equal(model.fc.bias, state["fc.bias"])


# --- make bench-noise -------------------------------------------------------------------------------


def test_noise_bench_counts_a_miss_only_where_float32_was_wrong_and_the_guard_kept_it():
    from float32_noise import summarize

    def record(group, side, redone, needed, error=1.0, moved=False, possible=None):
        return {"group": group, "side": side, "error_in_eps_lambda_max": error, "redone": redone, "needed": needed,
                "xmin_moved": moved, "xmin_switch_possible": possible}

    records = [
        record("tiny", 64, False, False, 3.0, possible=True), record("tiny", 32, True, True, 8.0, moved=True),
        record("tiny", 64, True, False, 5.0, moved=None, possible=False), record("big", 2048, False, True, 150.0),
    ]
    rows = summarize(records)
    assert [(row["group"], row["side"]) for row in rows] == [("tiny", 32), ("tiny", 64), ("big", 2048)]
    assert [row["model_noise"] for row in rows] == pytest.approx([12.8, 12.8, 204.8])
    assert [(row["matrices"], row["worst_error"], row["redone"], row["needed"], row["missed"]) for row in rows] == [
        (1, 8.0, 1, 1, 0), (2, 5.0, 1, 0, 0), (1, 150.0, 0, 1, 1),
    ]
    assert [(row["xmin_moved"], row["xmin_switch_possible"]) for row in rows] == [(1, 0), (0, 1), (0, 0)]


def test_noise_bench_measures_one_matrix_against_float64():
    from float32_noise import compare_solvers

    g = torch.Generator().manual_seed(5)
    result = compare_solvers(torch.randn(300, 96, generator=g))
    assert result["side"] == 96
    assert 0.0 < result["error_in_eps_lambda_max"] <= 12.8  # the guard's model at n = 96 (floor 128)
    assert result["alpha_difference"] < 1e-3 and result["needed"] is False
    assert result["redone"] == (result["predicted"] > 1e-3)
    assert result["xmin_moved"] is False and isinstance(result["xmin_switch_possible"], bool)


def test_an_xmin_switch_is_possible_only_when_the_noise_can_close_the_ks_gap(monkeypatch):
    import float32_noise
    from float32_noise import xmin_switch_possible

    from htsr_cli.spectra.fit import fit_ks

    x = torch.sort(torch.rand(300, generator=torch.Generator().manual_seed(3), dtype=torch.float64) ** -0.5).values
    fit = fit_ks(x)
    assert fit is not None and 1.5 < fit.alpha < 5.0
    monkeypatch.setattr(float32_noise, "FLOAT32_NOISE", 0.0)
    assert xmin_switch_possible(x, 300) is False  # no noise: the winner stays (no exact ties here)
    monkeypatch.setattr(float32_noise, "FLOAT32_NOISE", 1e4)
    assert xmin_switch_possible(x, 300) is True  # noise far above the KS gaps: any candidate could win
    assert xmin_switch_possible(x[:2], 300) is None  # too few eigenvalues for a scan
    assert xmin_switch_possible(torch.full((4,), 1e-9, dtype=torch.float64), 300) is None  # all below the ks floor


def test_the_previous_commits_row_shows_its_entry_point_and_tree_from_the_root():
    from render import display_command

    entry = "import sys; sys.path.insert(0, '/somewhere/repo/benchmarks/work/htsr-6b224db'); from htsr_cli.cli.app import main; main()"
    shown = display_command(["/somewhere/repo/.venv/bin/python", "-c", entry, "analyze", "/somewhere/repo/benchmarks/work/x"])
    assert shown == (
        "python -c 'import sys; sys.path.insert(0, \"benchmarks/work/htsr-6b224db\"); from htsr_cli.cli.app import main; "
        "main()' analyze benchmarks/work/x"
    )
