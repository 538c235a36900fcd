"""AlphaPruning's sparsity allocation against hand-computed values (algorithms.md section 7).

Reports here are built from LayerResults with chosen alphas, so every expected
number can be worked out on paper.
"""

import pytest

from htsr_cli.allocations import SparsitySettings, sparsity_allocation, sparsity_plan
from htsr_cli.errors import HtsrError
from htsr_cli.names import block_of
from htsr_cli.results.report import LayerResult, Report

LLAMA_7B_BLOCK_ALPHAS = [
    2.622, 2.890, 2.969, 2.964, 3.090, 3.064, 2.961, 2.746, 2.775, 2.609, 2.717, 2.730, 2.784, 2.852, 2.897, 3.177,
    3.123, 3.446, 3.872, 3.606, 3.895, 4.066, 3.755, 3.715, 3.994, 4.220, 4.102, 4.160, 3.851, 4.093, 4.160, 3.537,
]


def layer(name, alpha, *, kind="linear", params=100, num_evals=100, status="ok", reason=None, alpha_farms=None):
    return LayerResult(
        name=name, tensor=f"{name}.weight", kind=kind, shape=[10, 10], block=block_of(name), params=params,
        status=status, reason=reason, num_evals=num_evals if status == "ok" else None,
        alpha=alpha, alpha_farms=alpha_farms,
    )


def report(*layers):
    return Report(checkpoint="test.pth", settings={"xmin": "peak"}, layers=list(layers), summary={})


def approx(values, rel=2e-5):
    return pytest.approx(values, rel=rel, abs=1e-9)


# --- AlphaPruning (section 7) ---


def test_sparsity_test_vector():
    sparsities, clipped = sparsity_allocation([2, 3, 4, 5], [1, 1, 1, 1], target=0.5, epsilon=0.2)
    assert sparsities == approx([0.4, 0.466667, 0.533333, 0.6])
    assert clipped == 0


def test_sparsity_llama_7b_published_check():
    sparsities, _ = sparsity_allocation(LLAMA_7B_BLOCK_ALPHAS, [1] * 32, target=0.7, epsilon=0.2, clip=False)
    assert [round(p, 4) for p in sparsities[:3]] == [0.5703, 0.6176, 0.6315]
    assert [round(p, 4) for p in sparsities[-3:]] == [0.8297, 0.8415, 0.7316]
    assert round(min(sparsities), 4) == 0.5680
    assert round(max(sparsities), 4) == 0.8520
    assert sum(sparsities) / 32 == pytest.approx(0.7, abs=5e-4)


@pytest.mark.parametrize("clip", [True, False])
def test_sparsity_weighted_mean_is_the_target_with_unequal_sizes(clip):
    params = [4096, 11008, 512, 70000, 1]
    sparsities, _ = sparsity_allocation([2.1, 3.7, 5.0, 2.9, 4.4], params, target=0.6, epsilon=0.3, clip=clip)
    mean = sum(n * p for n, p in zip(params, sparsities)) / sum(params)
    assert abs(mean - 0.6) < 1e-9
    # higher alpha -> higher sparsity
    assert sparsities[0] < sparsities[3] < sparsities[1] < sparsities[4] < sparsities[2]


def test_sparsity_clip_one_layer():
    # r = [0.5, 1.5] -> p = [0.45, 1.35]; cap the second at 0.99, the first takes 1.8 - 0.99
    sparsities, clipped = sparsity_allocation([1, 2], [1, 1], target=0.9, epsilon=0.5)
    assert sparsities == approx([0.81, 0.99])
    assert clipped == 1
    unclipped, count = sparsity_allocation([1, 2], [1, 1], target=0.9, epsilon=0.5, clip=False)
    assert unclipped == approx([0.45, 1.35]) and count == 0


def test_sparsity_clip_iterates_until_no_free_layer_exceeds_the_cap():
    # r = [0.1, 1, 1.9]: p = [0.09, 0.9, 1.71] -> cap the third; rescaling the others
    # gives [0.155, 1.555] -> cap the second too; the first takes 2.7 - 1.98 = 0.72.
    sparsities, clipped = sparsity_allocation([1, 2, 3], [1, 1, 1], target=0.9, epsilon=0.9)
    assert sparsities == approx([0.72, 0.99, 0.99])
    assert clipped == 2


def test_sparsity_clip_keeps_mean_and_bounds_with_unequal_sizes():
    params = [300, 1000, 50, 2000, 700, 10]
    sparsities, clipped = sparsity_allocation([1.5, 6.0, 2.0, 5.5, 3.0, 5.9], params, target=0.9, epsilon=0.6)
    assert clipped == 3
    assert all(0 <= p <= 0.99 for p in sparsities)
    assert sum(1 for p in sparsities if p == 0.99) == 3
    assert abs(sum(n * p for n, p in zip(params, sparsities)) / sum(params) - 0.9) < 1e-9


def test_sparsity_all_equal_alphas_give_uniform_target():
    sparsities, clipped = sparsity_allocation([3.0, 3.0, 3.0], [10, 20, 30], target=0.7, epsilon=0.3)
    assert sparsities == approx([0.7, 0.7, 0.7]) and clipped == 0


def test_sparsity_target_above_the_cap_is_infeasible_when_clipping():
    with pytest.raises(HtsrError, match="0.99"):
        sparsity_allocation([2, 3], [1, 1], target=0.995, epsilon=0.1)
    sparsities, _ = sparsity_allocation([2, 3], [1, 1], target=0.995, epsilon=0.1, clip=False)
    assert sum(sparsities) / 2 == pytest.approx(0.995)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 0.0}, "target="),
        ({"target": 1.0}, "target="),
        ({"target": 1.5}, "target="),
        ({"target": 0.5, "epsilon": 1.0}, "epsilon="),
        ({"target": 0.5, "epsilon": -0.1}, "epsilon="),
        ({"target": 0.5, "granularity": "row"}, "granularity="),
        ({"target": 0.995}, "turn clipping off"),
    ],
)
def test_sparsity_settings_reject_bad_values(kwargs, message):
    with pytest.raises(HtsrError, match=message):
        SparsitySettings(**kwargs)


def two_block_model():
    return report(
        layer("embed_tokens", 9.0, kind="embedding"),
        layer("layers.0.q", 2.0),
        layer("layers.0.v", 4.0),
        layer("layers.1.q", 3.0),
        layer("layers.1.v", 5.0),
        layer("lm_head", 7.0),
    )


def sparsities_of(plan):
    return {entry["name"]: entry["sparsity"] for entry in plan["layers"]}


def test_sparsity_plan_block_versus_matrix_granularity():
    block = sparsity_plan(two_block_model(), SparsitySettings(0.5, epsilon=0.2, granularity="block"))
    # block means 3 and 4 -> r = [0.8, 0.8, 1.2, 1.2]
    assert sparsities_of(block) == {
        "embed_tokens": None, "layers.0.q": approx(0.4), "layers.0.v": approx(0.4),
        "layers.1.q": approx(0.6), "layers.1.v": approx(0.6), "lm_head": None,
    }
    matrix = sparsity_plan(two_block_model(), SparsitySettings(0.5, epsilon=0.2, granularity="matrix"))
    # alphas 2, 4, 3, 5 -> r = 0.8 + 0.4 (a - 2) / 3
    assert [entry["sparsity"] for entry in matrix["layers"][1:5]] == approx([0.4, 0.533333, 0.466667, 0.6])
    assert block["summary"]["weighted_mean"] == pytest.approx(0.5)
    assert matrix["summary"]["weighted_mean"] == pytest.approx(0.5)


def test_sparsity_plan_notes_excluded_layers_and_keeps_the_target_over_the_rest():
    model = report(
        layer("embed_tokens", 4.0, kind="embedding", params=1000),
        layer("layers.0.q", 2.0, params=100),
        layer("layers.0.k", None, status="skipped", reason="8 eigenvalues < min_evals 10", params=40),
        layer("layers.1.q", 3.0, params=300),
        layer("layers.1.k", None, status="fit-failed", reason="no valid power-law fit", params=40),
        layer("lm_head", 3.0, params=1000),
    )
    plan = sparsity_plan(model, SparsitySettings(0.5, epsilon=0.2, granularity="matrix"))
    notes = {entry["name"]: entry["note"] for entry in plan["layers"]}
    assert notes == {
        "embed_tokens": "embedding, not pruned",
        "layers.0.q": None,
        "layers.0.k": "no alpha: skipped (8 eigenvalues < min_evals 10)",
        "layers.1.q": None,
        "layers.1.k": "no alpha: fit-failed (no valid power-law fit)",
        "lm_head": "outside numbered blocks, not pruned",
    }
    # r = [0.8, 1.2] over 100 and 300 params: p = r * 0.5 * 400 / 440
    assert [plan["layers"][i]["sparsity"] for i in (1, 3)] == approx([0.8 * 200 / 440, 1.2 * 200 / 440])
    assert plan["summary"] == {
        "allocated": 2, "excluded": 4, "allocated_params": 400, "pruned_params": 200,
        "weighted_mean": pytest.approx(0.5), "min_sparsity": approx(0.8 * 200 / 440),
        "max_sparsity": approx(1.2 * 200 / 440), "clipped": 0, "above_one": 0,
    }
    assert plan["schema"] == "htsr.sparsity/1"
    assert plan["settings"]["analysis"] == {"xmin": "peak"}


def test_sparsity_plan_without_blocks():
    model = report(layer("conv1", 2.0, kind="conv2d"), layer("fc1", 3.0), layer("fc2", 5.0), layer("fc3", 9.0))
    with pytest.raises(HtsrError, match=r"granularity='block': .*use matrix"):
        sparsity_plan(model, SparsitySettings(0.5))
    plan = sparsity_plan(model, SparsitySettings(0.5, epsilon=0.2, granularity="matrix"))
    assert [entry["note"] for entry in plan["layers"]] == [
        "first layer, not pruned (--include-ends prunes it)", None, None, "last layer, not pruned (--include-ends prunes it)"
    ]
    assert sparsities_of(plan) == {"conv1": None, "fc1": approx(0.4), "fc2": approx(0.6), "fc3": None}


def test_sparsity_plan_from_alpha_farms():
    model = report(layer("h.0.a", 9.0, alpha_farms=2.0), layer("h.0.b", 1.5, alpha_farms=4.0))
    plan = sparsity_plan(model, SparsitySettings(0.5, epsilon=0.2, granularity="matrix", metric="alpha_farms"))
    assert [entry["sparsity"] for entry in plan["layers"]] == approx([0.4, 0.6])
    assert plan["layers"][0]["alpha_farms"] == 2.0
