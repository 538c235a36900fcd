"""The CUDA path agrees with the CPU path. Skipped on machines without a GPU."""

import pytest
import torch

import htsr_cli
from htsr_cli.spectra.matrices import as_slices
from htsr_cli.spectra.solver import Eigensolver

from tests.conftest import FIXTURES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("shape", [(512, 300), (300, 512), (64, 32, 3, 3)])
def test_cuda_eigenvalues_match_svdvals(shape):
    weight = torch.randn(shape, dtype=torch.float32).to(torch.bfloat16)
    slices = as_slices(weight)
    esd = Eigensolver.create("cuda", "float64").pooled_eigenvalues(slices).cpu()
    expected = torch.sort(torch.cat([torch.linalg.svdvals(s.double()) ** 2 for s in slices])).values
    assert abs(esd[-1] - expected[-1]) / expected[-1] < 1e-10


@pytest.mark.parametrize("fixture", ["tiny-cnn-trained.pth", "tiny-llama", "resnet18_w16.pth"])
@pytest.mark.parametrize("xmin", ["ks", "median", "peak"])
def test_cuda_report_equals_cpu_report(fixture, xmin):
    cpu = htsr_cli.analyze(FIXTURES / fixture, device="cpu", xmin=xmin, precision="float64")
    cuda = htsr_cli.analyze(FIXTURES / fixture, device="cuda", xmin=xmin, precision="float64")
    assert cuda.settings["device"] == "cuda"
    for a, b in zip(cpu.layers, cuda.layers):
        assert a.name == b.name and a.status == b.status and a.tail_size == b.tail_size
        if a.alpha is not None:
            assert b.alpha == pytest.approx(a.alpha, rel=1e-8)
            assert b.lambda_max == pytest.approx(a.lambda_max, rel=1e-10)


def test_cuda_module_stays_on_its_device():
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)).cuda()
    report = htsr_cli.analyze(model)
    assert report.settings["device"] == "cuda" and all(layer.alpha is not None for layer in report.layers)


@pytest.mark.parametrize("fixture", ["tiny-cnn-trained.pth", "tiny-llama", "resnet18_w16.pth"])
def test_cuda_mixed_default_matches_cpu_float64(fixture):
    """bf16/fp32 Grams in float32 on the GPU (bmm with out_dtype where torch has it), float64 eigensolver."""
    exact = htsr_cli.analyze(FIXTURES / fixture, device="cpu", precision="float64")
    cuda = htsr_cli.analyze(FIXTURES / fixture, device="cuda")
    assert (cuda.settings["precision"], cuda.settings["eigensolver_precision"]) == ("mixed", "float64")
    for a, b in zip(exact.layers, cuda.layers):
        assert a.name == b.name and a.status == b.status and a.tail_size == b.tail_size
        if a.alpha is not None:
            assert abs(b.alpha - a.alpha) <= 1e-3
            assert b.lambda_max == pytest.approx(a.lambda_max, rel=1e-5)


def test_cuda_bf16_gram_is_the_float32_gram():
    from htsr_cli.spectra.solver import _has_out_dtype_bmm

    weight = torch.randn(3, 2000, 300).to(torch.bfloat16)
    cuda = Eigensolver.create("cuda")
    on_gpu = cuda.gram(weight.cuda()).cpu()
    on_cpu = Eigensolver.create("cpu").gram(weight)
    assert on_gpu.dtype == torch.float32
    torch.testing.assert_close(torch.tril(on_gpu), torch.tril(on_cpu), rtol=1e-5, atol=1e-3)
    print("bmm with out_dtype:", _has_out_dtype_bmm(cuda.device))


def test_cuda_batched_and_single_solves_agree():
    """Batched cuSOLVER calls may take another algorithm than single ones: equal to 1e-12, not bitwise."""
    from htsr_cli.engine import scheduling

    weights = {f"layers.0.experts.{i}.w.weight": torch.randn(96, 64) for i in range(16)}
    batched = htsr_cli.analyze(weights, device="cuda", precision="float64")
    previous = scheduling.MAX_BATCH_SLICES
    scheduling.MAX_BATCH_SLICES = 1
    try:
        single = htsr_cli.analyze(weights, device="cuda", precision="float64")
    finally:
        scheduling.MAX_BATCH_SLICES = previous
    for a, b in zip(batched.layers, single.layers):
        assert a.lambda_max == pytest.approx(b.lambda_max, rel=1e-12) and a.tail_size == b.tail_size
