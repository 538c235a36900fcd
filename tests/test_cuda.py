"""The CUDA path agrees with the CPU path. Skipped on machines without a GPU."""

import pytest
import torch

import htsr_cli
from htsr_cli.matrices import as_slices
from htsr_cli.solver import Eigensolver

from conftest import FIXTURES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("shape", [(512, 300), (300, 512), (64, 32, 3, 3)])
def test_cuda_eigenvalues_match_svdvals(shape):
    weight = torch.randn(shape, dtype=torch.float32).to(torch.bfloat16)
    slices = as_slices(weight)
    esd = Eigensolver.create("cuda").pooled_eigenvalues(slices).cpu()
    expected = torch.sort(torch.cat([torch.linalg.svdvals(s.double()) ** 2 for s in slices])).values
    assert abs(esd[-1] - expected[-1]) / expected[-1] < 1e-10


@pytest.mark.parametrize("fixture", ["tiny-cnn-trained.pth", "tiny-llama", "resnet18_w16.pth"])
@pytest.mark.parametrize("xmin", ["ks", "median", "peak"])
def test_cuda_report_equals_cpu_report(fixture, xmin):
    cpu = htsr_cli.analyze(FIXTURES / fixture, device="cpu", xmin=xmin)
    cuda = htsr_cli.analyze(FIXTURES / fixture, device="cuda", xmin=xmin)
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
