"""AlphaLoRA's expert allocation against hand-computed values (algorithms.md section 9)."""

import pytest

from htsr_cli.allocations import ExpertSettings, expert_allocation, expert_plan
from htsr_cli.errors import HtsrError
from tests.allocations.test_sparsity import layer, report


# --- AlphaLoRA (section 9) ---


def test_experts_test_vector():
    assert expert_allocation([2, 3, 4, 5], total=20, beta=2.5) == [1, 3, 6, 10]


def test_experts_every_block_gets_one_and_the_total_is_exact():
    # quotas [0.016, 0.016, 4.968] -> largest remainder [0, 0, 5] -> two units move to the zeros
    assert expert_allocation([1, 1, 10], total=5, beta=2.5) == [1, 1, 3]
    counts = expert_allocation([2.3, 5.9, 3.1, 2.2, 4.4, 2.8, 3.3], total=31, beta=2.5)
    assert sum(counts) == 31 and min(counts) >= 1


def test_experts_total_below_blocks_is_an_error():
    with pytest.raises(HtsrError, match="total=3: is smaller than the number of blocks \\(4\\)"):
        expert_allocation([2, 3, 4, 5], total=3)


def test_expert_plan_scores_blocks_by_their_linear_matrices():
    model = report(
        layer("model.embed_tokens", 9.0, kind="embedding"),
        layer("model.layers.0.q", 1.0),
        layer("model.layers.0.v", 3.0),
        layer("model.layers.0.conv", 40.0, kind="conv1d"),
        layer("model.layers.1.q", 3.0),
        layer("model.layers.1.v", None, status="skipped", reason="quantized"),
        layer("model.layers.2.q", 4.0),
        layer("model.layers.3.q", 5.0),
        layer("lm_head", 9.0),
    )
    plan = expert_plan(model, ExpertSettings())
    assert [(e["name"], e["score"], e["matrices"], e["experts"], e["top_k"]) for e in plan["layers"]] == [
        ("model.layers.0", 2.0, 2, 1, 1),
        ("model.layers.1", 3.0, 1, 3, 2),
        ("model.layers.2", 4.0, 1, 6, 2),
        ("model.layers.3", 5.0, 1, 10, 2),
    ]
    assert plan["settings"]["total"] == 20
    assert plan["summary"] == {"blocks": 4, "experts": 20}
    assert plan["schema"] == "htsr.experts/1"


def test_expert_plan_needs_blocks():
    with pytest.raises(HtsrError, match="no numbered blocks"):
        expert_plan(report(layer("fc1", 2.0), layer("fc2", 3.0)), ExpertSettings())
