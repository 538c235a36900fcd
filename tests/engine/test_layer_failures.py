"""Layers that cannot be solved are reported, never a crash (issue 14 items 5, 6, 7 and the all-zero layer).

- every dtype the readers accept, NaN/Inf included (float8 has no isfinite);
- a Gram that overflows (1e200 in float64, 1e30 with a float32 Gram) fails that layer only;
- an all-zero matrix says so instead of "every candidate alpha <= 1";
- a layer whose solve needs more than the memory budget is skipped before anything is read,
  and `--max-memory` sets that budget (nonsense: exit 2, one line).
"""

from __future__ import annotations

import json
import struct
import threading

import pytest
import torch
from safetensors.torch import save_file

import htsr_cli
from htsr_cli.spectra.memory import format_bytes

from tests.conftest import assert_user_error

READER_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]


def svd_lambda_max(weight: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(weight.to(torch.float64)).max() ** 2)


@pytest.mark.parametrize("dtype", READER_DTYPES, ids=lambda dtype: str(dtype).removeprefix("torch."))
def test_every_reader_dtype_is_solved_and_its_non_finite_layers_fail(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(80, 60, generator=g) / 4
    with_nan, with_inf = values.clone(), values.clone()
    with_nan[5, 7] = float("nan")
    with_inf[79, 0] = float("inf")
    clean = values.to(dtype)
    weights = {"clean.weight": clean, "nan.weight": with_nan.to(dtype)}
    if dtype != torch.float8_e4m3fn:  # no infinity there: torch saturates inf to 448
        weights["inf.weight"] = with_inf.to(dtype)
    save_file(weights, tmp_path / "model.safetensors")
    report = htsr_cli.analyze(tmp_path / "model.safetensors", precision="float64")
    ok = report.layer("clean")
    assert ok.status == "ok" and ok.storage == str(dtype).removeprefix("torch.")
    assert abs(ok.lambda_max - svd_lambda_max(clean)) / svd_lambda_max(clean) < 1e-10
    for name in weights.keys() - {"clean.weight"}:
        bad = report.layer(name.removesuffix(".weight"))
        assert (bad.status, bad.reason, bad.alpha) == ("failed", "non-finite weights", None)
    mixed = htsr_cli.analyze(tmp_path / "model.safetensors").layer("clean")  # the default: float32 Gram
    assert abs(mixed.lambda_max - ok.lambda_max) / ok.lambda_max < 1e-6


def test_float8_layers_through_the_cli(cli, tmp_path):
    weight = torch.randn(64, 48, generator=torch.Generator().manual_seed(1)).to(torch.float8_e4m3fn)
    bad = weight.clone()
    bad[0, 0] = float("nan")
    save_file({"a.weight": weight, "b.weight": bad}, tmp_path / "fp8.safetensors")
    result = cli("analyze", tmp_path / "fp8.safetensors", "--format", "json")
    assert result.exit_code == 0, result.output
    layers = {layer["name"]: layer for layer in json.loads(result.stdout)["layers"]}
    assert layers["a"]["status"] == "ok" and layers["a"]["storage"] == "float8_e4m3fn"
    assert (layers["b"]["status"], layers["b"]["reason"]) == ("failed", "non-finite weights")


def test_a_gram_that_overflows_fails_the_layer_and_the_run_goes_on():
    g = torch.Generator().manual_seed(2)
    weights = {
        "huge64.weight": torch.randn(40, 30, generator=g, dtype=torch.float64) * 1e200,
        "huge32.weight": torch.randn(40, 30, generator=g) * 1e30,
        "fine.weight": torch.randn(40, 30, generator=g),
    }
    exact = htsr_cli.analyze(weights, precision="float64")
    huge64 = exact.layer("huge64")
    assert huge64.status == "failed" and huge64.reason.startswith("the Gram matrix overflows float64 (largest |weight| ")
    assert float(huge64.reason.split("|weight| ")[1].rstrip(")")) == pytest.approx(float(weights["huge64.weight"].abs().max()), rel=1e-3)
    assert exact.layer("huge32").status == "ok"  # 1e30 squared fits in a float64 Gram
    for mode in ("mixed", "float32"):
        report = htsr_cli.analyze(weights, precision=mode)
        huge32 = report.layer("huge32")
        assert huge32.status == "failed"
        assert huge32.reason.startswith("the Gram matrix overflows float32")
        assert huge32.reason.endswith("; --precision float64 forms it in float64")
        assert report.layer("fine").status == "ok" and report.summary["failed"] == 2


def test_an_all_zero_layer_says_its_spectrum_is_all_zero():
    weights = {"lora_B.weight": torch.zeros(64, 8), "tiny.weight": torch.full((40, 30), 1e-5), "fine.weight": torch.randn(40, 30)}
    for xmin in ("ks", "median", "peak"):
        report = htsr_cli.analyze(weights, xmin=xmin, min_evals=2)
        zero = report.layer("lora_B")
        assert (zero.status, zero.alpha, zero.lambda_max, zero.quality) == ("fit-failed", None, 0.0, "unknown")
        assert zero.reason == "the spectrum is all zero (an all-zero matrix, e.g. a LoRA B matrix before training)"
    tiny = htsr_cli.analyze(weights).layer("tiny")  # one eigenvalue 1.2e-7 and 29 zeros: below ks's floor
    assert (tiny.status, tiny.reason) == ("fit-failed", "fewer than 2 eigenvalues above 1e-05 (xmin=ks ignores smaller ones)")


# --- the memory budget ------------------------------------------------------------------------


def test_a_layer_over_the_memory_budget_is_skipped_before_it_is_read():
    weights = {"big.weight": torch.randn(1200, 1000), "small.weight": torch.randn(100, 80)}
    report = htsr_cli.analyze(weights, max_memory="8MiB")
    big = report.layer("big")
    # 1200 x 1000 float32 read (4.6 MiB) + 1000^2 x (4 + 16) bytes of Grams + a 4.6 MiB upcast block
    need = 1200 * 1000 * 4 + 1000 * 1000 * 20 + 1200 * 1000 * 4
    assert (big.status, big.alpha) == ("skipped", None)
    assert big.reason == (
        f"needs {format_bytes(need)} for its Gram matrix and eigensolver, over the memory budget of 8.0 MiB (--max-memory)"
    )
    assert report.layer("small").status == "ok"
    assert report.settings["max_memory"] == 8 * 2**20
    assert htsr_cli.analyze(weights, max_memory=10**9).layer("big").status == "ok"


def test_a_header_claiming_a_huge_matrix_is_skipped_not_allocated(tmp_path):
    """A valid safetensors file whose one tensor claims 100000 x 100000 bf16 (20 GB, a sparse file)."""
    path = tmp_path / "claims.safetensors"
    header = json.dumps({"huge.weight": {"dtype": "BF16", "shape": [100000, 100000], "data_offsets": [0, 2 * 10**10]}})
    header = header.encode() + b" " * (-len(header) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + 2 * 10**10)  # sparse: no 20 GB are written
    report = htsr_cli.analyze(path)
    huge = report.layer("huge")
    need = 2 * 10**10 + 10**10 * 20 + 64 * 2**20  # the matrix, float32 Gram + two float64 copies, an upcast block
    assert huge.status == "skipped"
    assert huge.reason.startswith(f"needs {format_bytes(need)} for its Gram matrix and eigensolver, over the memory budget of ")
    assert huge.reason.endswith("(available memory; --max-memory sets it)")


def test_two_solves_run_at_once_only_when_both_fit_the_budget(monkeypatch):
    from htsr_cli.engine import pipeline as analysis

    running, most = 0, 0
    lock = threading.Lock()
    original = analysis._solve_batch

    def solve(batch, **options):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            return original(batch, **options)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(analysis, "_solve_batch", solve)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        weights = {f"layers.{i}.weight": torch.randn(300 + i, 256) for i in range(6)}  # six batches, ~1.9 MiB each
        assert all(layer.status == "ok" for layer in htsr_cli.analyze(weights, max_memory="3MiB").layers)
    finally:
        torch.set_num_threads(previous)
    assert most == 1


@pytest.mark.parametrize(
    "option",
    ["lots", "8 GB of RAM", "-5GB", "0", "8", "nan", "inf", "1e400GB", "12XB", "", "GB"],
)
def test_max_memory_nonsense_is_a_user_error(cli, tmp_path, option):
    path = tmp_path / "model.safetensors"
    save_file({"fc.weight": torch.randn(20, 30)}, path)
    for command in (["analyze", path], ["gate", path], ["allocate", "sparsity", path, "--target", "0.5"]):
        result = cli(*command, "--max-memory", option)
        assert_user_error(result, "--max-memory")
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_max_memory_reaches_every_analysing_command(cli, tmp_path):
    path = tmp_path / "model.safetensors"
    weights = {f"layers.{i}.{name}.weight": torch.randn(*shape) for i in range(2) for name, shape in
               [("big", (600, 500)), ("small", (60, 50)), ("other", (50, 60))]}
    save_file(weights, path)
    result = cli("analyze", path, "--max-memory", "2MiB", "--format", "json")
    assert result.exit_code == 0, result.output
    layers = {layer["name"]: layer["status"] for layer in json.loads(result.stdout)["layers"]}
    assert layers == {f"layers.{i}.{name}": "skipped" if name == "big" else "ok" for i in range(2) for name in ("big", "small", "other")}
    for command in (
        ["report", path, "-o", tmp_path / "r.html"],
        ["gate", path, "--no-require-layers"],
        ["compare", path, path],
        ["allocate", "experts", path],
        ["allocate", "sparsity", path, "--target", "0.5", "--granularity", "matrix"],
        ["lr-schedule", "export", path, "--base-lr", "0.1"],
    ):
        result = cli(*command, "--max-memory", "2MiB", "--precision", "float64")
        assert result.exit_code in (0, 1), (command, result.output)
        assert "Traceback" not in result.output
