"""Tensors -> matrices (algorithms.md section 1): which tensors are layers, and the slices each is solved as."""

import pytest
import torch

from htsr_cli.spectra.matrices import ExpertPart, as_slices, describe, is_weight_key, merge_runs


def test_conv_slices_are_the_kernel_positions():
    weight = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    slices = as_slices(weight)
    assert slices.shape == (4, 2, 3)
    assert torch.equal(slices[1], weight[:, :, 0, 1])


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


def test_conv1d_slices_are_the_kernel_taps_and_share_the_weights_storage():
    weight = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 4)  # [out 3, in 2, kernel 4]
    slices = as_slices(weight)
    assert slices.shape == (4, 3, 2)
    assert slices[2].tolist() == [[2.0, 6.0], [10.0, 14.0], [18.0, 22.0]]  # weight[:, :, 2]
    assert slices.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()  # a view, no copy
    matrix = torch.ones(5, 7)
    assert as_slices(matrix).shape == (1, 5, 7)


def test_one_experts_matrix_of_a_fused_tensor():
    # experts [2, 4, 4]: expert 1 holds rows 16..19, 20..23, 24..27, 28..31
    fused = torch.arange(2 * 4 * 4).reshape(2, 4, 4)
    assert as_slices(fused, ExpertPart(expert=1)).tolist() == [fused[1].tolist()]
    # fused gate_up split along the rows: gate is the first half, up the second
    assert as_slices(fused, ExpertPart(expert=1, half=1)).tolist() == [[[24, 25, 26, 27], [28, 29, 30, 31]]]
    # interleaved gate_up (gpt-oss): gate and up alternate along the last axis
    assert as_slices(fused, ExpertPart(expert=1, half=0, interleaved=True)).tolist() == [
        [[16, 18], [20, 22], [24, 26], [28, 30]]
    ]
    assert as_slices(fused, ExpertPart(expert=1, half=1, interleaved=True)).tolist() == [
        [[17, 19], [21, 23], [25, 27], [29, 31]]
    ]


def test_evenly_spaced_experts_merge_into_one_strided_view():
    fused = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2)
    experts = [as_slices(fused, ExpertPart(expert=e)) for e in range(4)]
    (merged,) = merge_runs(experts)
    assert merged.shape == (4, 3, 2) and torch.equal(merged, fused)
    # experts 0 and 2 are 2 x 6 elements apart: one view with stride 12; expert 3 breaks the spacing
    every_other, last = merge_runs([experts[0], experts[2], experts[3]])
    assert every_other.stride(0) == 12 and torch.equal(every_other, fused[0::2])
    assert torch.equal(last, fused[3:4])
    # matrices of different tensors never merge, even when shapes agree
    other = torch.zeros(3, 2)
    assert len(merge_runs([experts[0], as_slices(other)])) == 2


@pytest.mark.parametrize(
    ("key", "is_weight"),
    [
        ("lm_head.weight", True),
        ("in_proj_weight", True),  # nn.MultiheadAttention's packed projection
        ("bn1.running_mean", False),
        ("h.0.attn.bias", False),  # GPT-2's causal mask buffer
        ("embeddings.position_ids", False),
    ],
)
def test_weight_keys_end_in_weight(key, is_weight):
    assert is_weight_key(key) is is_weight


def test_a_conv_kernel_is_solved_as_one_matrix_per_position():
    spec = describe("features.0.weight", (32, 16, 3, 3), torch.float32, min_evals=10)
    assert spec.slice_grid == (9, 32, 16)
    assert spec.num_evals == 9 * 16  # min(32, 16) eigenvalues per kernel position
    assert spec.params == 32 * 16 * 9
