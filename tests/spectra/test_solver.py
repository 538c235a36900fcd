"""The eigensolver against svdvals**2, and tensors -> matrices (algorithms.md sections 1-2)."""

import pytest
import torch

from htsr_cli.errors import HtsrError
from htsr_cli.spectra.matrices import as_slices, describe
from htsr_cli.names import block_of, module_name
from htsr_cli.spectra.solver import Eigensolver, resolve_device

SOLVER = Eigensolver.create("cpu", "float64")  # the reference path: algorithms.md's 1e-10 bar


def reference(slices):
    """The slow, obvious way: every slice's singular values squared, pooled and sorted."""
    return torch.sort(torch.cat([torch.linalg.svdvals(s.double()) ** 2 for s in slices])).values


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


def test_conv_slices_are_the_kernel_positions():
    weight = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    slices = as_slices(weight)
    assert slices.shape == (4, 2, 3)
    assert torch.equal(slices[1], weight[:, :, 0, 1])


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


@pytest.mark.parametrize(
    "key,shape,dtype,kind,evals,reason",
    [
        ("encoder.layer.0.attention.self.query.weight", (384, 384), torch.float32, "linear", 384, None),
        ("embeddings.word_embeddings.weight", (30522, 384), torch.float32, "embedding", 384, None),
        ("transformer.wte.weight", (50257, 768), torch.bfloat16, "embedding", 768, None),
        ("layer1.0.conv1.weight", (64, 64, 3, 3), torch.float32, "conv2d", 9 * 64, None),
        ("conv.weight", (32, 16, 5), torch.float16, "conv1d", 5 * 16, None),
        ("h.0.attn.c_attn.weight", (768, 2304), torch.float32, "linear", 768, None),  # GPT-2 Conv1D
        ("model.layers.0.self_attn.q_proj.qweight", (512, 4096), torch.int32, "linear", 0, "quantized"),
        ("fc.weight", (8, 3), torch.float32, "linear", 3, "3 eigenvalues < min_evals 10"),
    ],
)
def test_describe(key, shape, dtype, kind, evals, reason):
    spec = describe(key, shape, dtype, min_evals=10)
    assert (spec.kind, spec.num_evals, spec.skip_reason) == (kind, evals, reason)
    params = 1
    for size in shape:
        params *= size
    assert spec.params == params


@pytest.mark.parametrize(
    "key,shape",
    [
        ("bn1.weight", (64,)),  # 1-D norm
        ("fc.bias", (10,)),
        ("h.0.attn.bias", (1, 1, 1024, 1024)),  # GPT-2 causal-mask buffer
        ("bn1.num_batches_tracked", ()),
        ("cls_token", (1, 1, 768)),
    ],
)
def test_non_matrices_are_not_layers(key, shape):
    assert describe(key, shape, torch.float32, min_evals=10) is None


def test_names_and_blocks():
    assert module_name("model.layers.7.mlp.up_proj.weight") == "model.layers.7.mlp.up_proj"
    assert module_name("in_proj_weight") == "in_proj_weight"
    assert block_of("model.layers.7.mlp.up_proj") == "model.layers.7"
    assert block_of("layer3.1.conv2") == "layer3.1"
    assert block_of("encoder.layer.0.attention.self.query") == "encoder.layer.0"
    assert block_of("lm_head") is None


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
