"""SolverPrecision: the one place that decides what a solve computes in, for every (precision, xmin) pair."""

from __future__ import annotations

import pytest
import torch

from htsr_cli.errors import InvalidSetting
from htsr_cli.settings import PRECISIONS, XMIN_METHODS, AnalyzeSettings
from htsr_cli.spectra.solver import Eigensolver, SolverPrecision

CPU = torch.device("cpu")
NARROW = (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn)

# (precision, xmin) -> (mode solved in, Gram of narrow weights, Gram of float64 weights,
#                       eigensolver dtype, guarded, nominal Gram name)
EXPECTED = {
    ("mixed", "ks"): ("mixed", torch.float32, torch.float64, torch.float64, False, "float32"),
    ("mixed", "median"): ("mixed", torch.float32, torch.float64, torch.float64, False, "float32"),
    ("mixed", "peak"): ("float64", torch.float64, torch.float64, torch.float64, False, "float64"),
    ("float64", "ks"): ("float64", torch.float64, torch.float64, torch.float64, False, "float64"),
    ("float64", "median"): ("float64", torch.float64, torch.float64, torch.float64, False, "float64"),
    ("float64", "peak"): ("float64", torch.float64, torch.float64, torch.float64, False, "float64"),
    ("float32", "ks"): ("float32", torch.float32, torch.float32, torch.float32, True, "float32"),
    ("float32", "median"): ("float32", torch.float32, torch.float32, torch.float32, True, "float32"),
    ("float32", "peak"): ("float64", torch.float64, torch.float64, torch.float64, False, "float64"),
}


def test_every_precision_and_xmin_pair_is_covered():
    assert set(EXPECTED) == {(precision, xmin) for precision in PRECISIONS for xmin in XMIN_METHODS}


@pytest.mark.parametrize(("precision", "xmin"), list(EXPECTED))
def test_decisions_for_each_precision_and_xmin(precision, xmin):
    mode, narrow_gram, float64_gram, eigensolver, guarded, nominal = EXPECTED[(precision, xmin)]
    decided = SolverPrecision.for_settings(AnalyzeSettings(precision=precision, xmin=xmin))
    assert decided.mode == mode
    assert {stored: decided.gram_dtype(stored, CPU) for stored in NARROW} == dict.fromkeys(NARROW, narrow_gram)
    assert decided.gram_dtype(torch.float64, CPU) == float64_gram
    assert decided.eigensolver_dtype == eigensolver
    assert decided.guarded is guarded
    assert decided.eigensolver_precision == str(eigensolver).removeprefix("torch.")
    assert decided.nominal_gram_precision == nominal


def test_tf32_matmuls_give_float32_weights_a_float64_gram_on_cuda_only():
    """The policy alone (no GPU needed): with TF32 allowed, float32 weights on CUDA get a float64 Gram."""
    cuda = torch.device("cuda", 0)
    previous = torch.get_float32_matmul_precision()
    try:
        for mode in ("mixed", "float32"):
            precision = SolverPrecision(mode)
            torch.set_float32_matmul_precision("highest")
            assert precision.gram_dtype(torch.float32, cuda) == torch.float32
            torch.set_float32_matmul_precision("high")
            assert precision.gram_dtype(torch.float32, cuda) == torch.float64
            assert precision.gram_dtype(torch.bfloat16, cuda) == torch.float32
            assert precision.gram_dtype(torch.float32, CPU) == torch.float32
    finally:
        torch.set_float32_matmul_precision(previous)


def test_a_solver_asks_its_precision():
    by_name = Eigensolver.create("cpu", "float32")
    assert by_name.precision == SolverPrecision("float32")
    assert by_name == Eigensolver.create("cpu", SolverPrecision("float32"))
    assert by_name.gram_dtype(torch.float64) == torch.float32
    assert by_name.eigensolver_dtype == torch.float32


def test_an_unknown_mode_is_refused_naming_the_parameter():
    with pytest.raises(InvalidSetting, match="precision"):
        SolverPrecision("float16")
