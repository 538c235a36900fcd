"""The eigensolver against svdvals**2 (algorithms.md section 2): pooled spectra, chunked and upcast Grams, devices."""

import dataclasses

import pytest
import torch

from htsr_cli.errors import HtsrError
from htsr_cli.spectra.matrices import as_slices
from htsr_cli.spectra.solver import Eigensolver, resolve_device

SOLVER = Eigensolver.create("cpu", "float64")  # the reference path: algorithms.md's 1e-10 bar


def reference(slices):
    """The slow, obvious way: every slice's singular values squared, pooled and sorted."""
    return torch.sort(torch.cat([torch.linalg.svdvals(s.double()) ** 2 for s in slices])).values


def test_eigenvalues_of_each_stack_come_back_in_order_whatever_the_workers():
    g = torch.Generator().manual_seed(5)
    stacks = [SOLVER.gram(torch.randn(count, 40, 30, generator=g, dtype=torch.float64)) for count in (1, 3, 2, 1, 4)]
    expected = [SOLVER.eigenvalues(grams) for grams in stacks]
    for workers in (1, 2, 4):
        solver = dataclasses.replace(SOLVER, parallel_solves=workers)
        got = solver.eigenvalues_of_each(iter(stacks))
        assert len(got) == len(expected)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((300, 120), torch.float32),  # tall
        ((80, 250), torch.float32),  # wide
        ((64, 32, 3, 3), torch.float32),  # conv2d
        ((48, 40, 5), torch.float32),  # conv1d
        ((200, 150), torch.bfloat16),
        ((200, 150), torch.float16),
    ],
)
def test_eigenvalues_equal_squared_singular_values(shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    weight = torch.randn(shape, generator=g).to(dtype)
    slices = as_slices(weight)
    esd = SOLVER.pooled_eigenvalues(slices)
    expected = reference(slices)
    assert esd.dtype == torch.float64
    assert esd.numel() == expected.numel()
    assert abs(esd[-1] - expected[-1]) / expected[-1] < 1e-10
    torch.testing.assert_close(esd, expected, rtol=1e-8, atol=1e-9 * float(expected[-1]))


def test_fp8_is_upcast_when_torch_has_it():
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8 dtype")
    weight = torch.randn(64, 32).to(torch.float8_e4m3fn)
    esd = SOLVER.pooled_eigenvalues(as_slices(weight))
    expected = reference(as_slices(weight.to(torch.float64)))
    assert abs(esd[-1] - expected[-1]) / expected[-1] < 1e-10


def test_gram_is_chunked_without_changing_values(monkeypatch):
    import htsr_cli.spectra.solver as solver_module

    weight = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    whole = SOLVER.pooled_eigenvalues(as_slices(weight))
    monkeypatch.setattr(solver_module, "GRAM_BUDGET_BYTES", 1)
    assert torch.equal(SOLVER.pooled_eigenvalues(as_slices(weight)), whole)


def test_conv_scale_multiplies_eigenvalues():
    slices = as_slices(torch.randn(8, 6, 3, 3))
    assert torch.allclose(SOLVER.pooled_eigenvalues(slices, 0.5), SOLVER.pooled_eigenvalues(slices) * 0.5)


def test_cuda_request_without_cuda_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(HtsrError, match="device=.cuda.: no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_gram_accumulated_over_upcast_blocks_is_exact(monkeypatch):
    """A tall bf16 matrix is upcast block by block (never whole); the spectrum is unchanged."""
    import htsr_cli.spectra.solver as solver_module

    weight = torch.randn(1000, 64).to(torch.bfloat16)
    monkeypatch.setattr(solver_module, "UPCAST_BLOCK_BYTES", 64 * 8 * 37)  # 37-row blocks
    esd = SOLVER.pooled_eigenvalues(as_slices(weight))
    expected = reference(as_slices(weight))
    assert abs(esd[-1] - expected[-1]) / expected[-1] < 1e-10
    torch.testing.assert_close(esd, expected, rtol=1e-8, atol=1e-9 * float(expected[-1]))


def test_non_finite_check_is_blockwise(monkeypatch):
    import htsr_cli.spectra.solver as solver_module

    monkeypatch.setattr(solver_module, "UPCAST_BLOCK_BYTES", 8 * 10)  # 10-element blocks
    weight = torch.randn(30, 7)
    assert SOLVER.all_finite(as_slices(weight))
    weight[29, 6] = float("nan")
    assert not SOLVER.all_finite(as_slices(weight))
    conv = torch.randn(4, 3, 2, 2)
    conv[0, 0, 1, 1] = float("inf")
    assert not SOLVER.all_finite(as_slices(conv))


# --- numpy's LAPACK for mid-sized float64 Grams on a one-thread CPU eigensolver ---------------------


def _one_thread(precision: str = "mixed") -> Eigensolver:
    return dataclasses.replace(Eigensolver.create("cpu", precision), eigensolver_threads=1, parallel_solves=2)


def _grams(count: int, side: int, seed: int = 0) -> torch.Tensor:
    samples = torch.randn(count, 2 * side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return samples.mT @ samples


def test_mid_sized_float64_grams_are_solved_by_numpy_and_agree_with_torch():
    import numpy as np

    from htsr_cli.spectra.solver import NUMPY_EIGVALSH_SIDES, _ONE_THREAD_BLAS

    if not _ONE_THREAD_BLAS.available:
        pytest.skip("threadpoolctl finds no BLAS under numpy to hold at one thread")
    solver = _one_thread()
    for side in (NUMPY_EIGVALSH_SIDES[0], 600):
        grams = _grams(3, side)
        got = solver.eigenvalues(grams)
        # The route: bit for bit numpy's answer on one thread (OpenBLAS's bits depend on its thread count) ...
        expected = torch.from_numpy(np.linalg.eigvalsh(grams.numpy(), UPLO="L")).clamp_min(0.0)
        assert torch.equal(got, expected)
        # ... and the same spectrum as torch's to round-off.
        reference = torch.linalg.eigvalsh(grams)
        assert torch.allclose(got, reference.clamp_min(0.0), rtol=0, atol=1e-12 * float(reference.max()))


def test_small_float32_and_multithreaded_solves_stay_with_torch():
    from htsr_cli.spectra.solver import NUMPY_EIGVALSH_SIDES

    small = _grams(4, NUMPY_EIGVALSH_SIDES[0] - 1)
    assert not _one_thread()._numpy_solves(small.shape[-1], torch.float64)
    assert not _one_thread("float32")._numpy_solves(768, torch.float32)
    assert not dataclasses.replace(_one_thread(), eigensolver_threads=2)._numpy_solves(768, torch.float64)
    assert not _one_thread()._numpy_solves(NUMPY_EIGVALSH_SIDES[1] + 1, torch.float64)
    assert _one_thread()._numpy_solves(768, torch.float64) or not _blas_available()


def _blas_available() -> bool:
    from htsr_cli.spectra.solver import _ONE_THREAD_BLAS

    return _ONE_THREAD_BLAS.available


def test_numpy_blas_is_set_to_one_thread_by_the_first_numpy_solve_and_stays_there():
    pytest.importorskip("threadpoolctl")
    if not _blas_available():
        pytest.skip("threadpoolctl finds no BLAS under numpy to hold at one thread")

    from htsr_cli.spectra.solver import _ONE_THREAD_BLAS

    _one_thread().eigenvalues(_grams(1, 512))
    # The BLAS libraries loaded when htsr first looked (numpy's); one loaded later (scipy's) is not numpy's.
    held = _ONE_THREAD_BLAS._controller.lib_controllers
    assert held and all(lib.num_threads == 1 for lib in held)
    _one_thread().eigenvalues(_grams(1, 512))
    assert all(lib.num_threads == 1 for lib in held)


def test_numpy_solves_on_the_pool_equal_solves_one_at_a_time_bit_for_bit():
    solver = _one_thread()
    # Measured: with OpenBLAS's thread count set and restored around each solve, solves on the pool
    # threads came out different in the last bits from the same solves on the main thread.
    stacks = [_grams(2, side, seed) for seed, side in enumerate((512, 256, 600, 512, 768) * 3)]
    pooled = solver.eigenvalues_of_each(iter(stacks))
    alone = [dataclasses.replace(solver, parallel_solves=1).eigenvalues(stack) for stack in stacks]
    assert all(torch.equal(a, b) for a, b in zip(pooled, alone))
