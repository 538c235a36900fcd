"""`htsr allocate bits` as a library: the exact solver, the alpha objective, the plan and its exports."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from fractions import Fraction

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import FIXTURES
from htsr_cli.allocations.bits import (
    BitsSettings,
    alpha_distortions,
    bits_allocation,
    bits_plan,
    fused_unit,
    stored_bits,
)
from htsr_cli.allocations.bits_exports import GGUF_TYPES, llama_cpp_tensor_types, llm_compressor_recipe
from htsr_cli.errors import HtsrError, InvalidSetting
from tests.results.test_schemas import errors as schema_errors
from tests.results.test_schemas import validate

TINY_LLAMA = FIXTURES / "tiny-llama"


@pytest.fixture(scope="module")
def report():
    import htsr_cli

    return htsr_cli.analyze(TINY_LLAMA, xmin="peak")


def test_the_hand_checked_vector_of_algorithms_md():
    """algorithms.md section 14: sizes 1, 1, 2, alphas 2, 3, 4, choices {2, 4}, average 3, spread 1."""
    distortions = alpha_distortions([2.0, 3.0, 4.0], [1, 1, 2], [[2, 4]] * 3, spread=1.0)
    assert distortions == [[4 * 4.0**-2, 4 * 4.0**-4], [4.0**-2, 4.0**-4], [2 / 4 * 4.0**-2, 2 / 4 * 4.0**-4]]
    solved = bits_allocation([1, 1, 2], [[2, 4]] * 3, distortions, Fraction(3 * 4))
    # (4, 4, 2): distortion 0.0508; the other full-budget answer (2, 2, 4) costs 0.3145.
    assert solved.bits == [4, 4, 2] and solved.exact


def _brute_force(sizes, options, distortions, capacity):
    best = None
    for picks in itertools.product(*(range(len(choices)) for choices in options)):
        used = sum(size * choices[pick] for size, choices, pick in zip(sizes, options, picks))
        if used > capacity:
            continue
        key = (-used, sum(values[pick] for values, pick in zip(distortions, picks)))
        if best is None or key < best:
            best = key
    return best


@given(
    st.lists(
        st.tuples(st.integers(1, 6), st.sets(st.integers(1, 8), min_size=1, max_size=3), st.floats(0.5, 9.0)),
        min_size=1, max_size=5,
    ),
    st.floats(0.0, 1.0),
)
def test_the_solver_is_exact_against_brute_force(units, fill):
    sizes = [size for size, _, _ in units]
    options = [sorted(choices) for _, choices, _ in units]
    distortions = alpha_distortions([alpha for _, _, alpha in units], sizes, options, spread=1.0)
    low = sum(size * min(choices) for size, choices in zip(sizes, options))
    high = sum(size * max(choices) for size, choices in zip(sizes, options))
    capacity = Fraction(low) + Fraction(fill) * (high - low)
    solved = bits_allocation(sizes, options, distortions, capacity)
    used = sum(size * bits for size, bits in zip(sizes, solved.bits))
    distortion = sum(values[choices.index(bits)] for values, choices, bits in zip(distortions, options, solved.bits))
    best_used, best_distortion = _brute_force(sizes, options, distortions, capacity)
    assert used == -best_used
    assert distortion == pytest.approx(best_distortion, rel=1e-12)


def test_a_coarsened_table_stays_within_the_capacity_and_says_it_is_not_exact():
    sizes, options = [7, 11, 13, 17], [[2, 3, 4, 8]] * 4
    distortions = alpha_distortions([1.0, 2.0, 3.0, 4.0], sizes, options, 1.0)
    solved = bits_allocation(sizes, options, distortions, Fraction(4 * 48), table_limit=40)
    assert not solved.exact and solved.cost_unit > 1
    assert sum(size * bits for size, bits in zip(sizes, solved.bits)) <= 4 * 48
    assert bits_allocation(sizes, options, distortions, Fraction(4 * 48)).exact


@given(st.lists(st.floats(1.0, 8.0), min_size=2, max_size=8, unique=True), st.sampled_from([2.5, 3.0, 3.5, 4.0, 5.5]))
def test_with_equal_sizes_a_smaller_alpha_never_gets_fewer_bits(alphas, average):
    """The exchange argument of algorithms.md: swapping two widths against the alpha order lowers the objective."""
    options = [[2, 3, 4, 8]] * len(alphas)
    distortions = alpha_distortions(alphas, [5] * len(alphas), options, 1.0)
    solved = bits_allocation([5] * len(alphas), options, distortions, Fraction(average) * 5 * len(alphas))
    by_alpha = [bits for _, bits in sorted(zip(alphas, solved.bits))]
    assert by_alpha == sorted(by_alpha, reverse=True)


def test_equal_alphas_give_uniform_widths_when_the_average_is_a_choice():
    distortions = alpha_distortions([3.0] * 4, [4, 4, 8, 8], [[2, 3, 4, 8]] * 4, 1.0)
    assert bits_allocation([4, 4, 8, 8], [[2, 3, 4, 8]] * 4, distortions, Fraction(3 * 24)).bits == [3, 3, 3, 3]


@pytest.mark.parametrize(("options", "message"), [
    ({"average": 9.0}, "must lie within the choices' range [2, 8]"),
    ({"average": 1.5}, "must lie within the choices' range [2, 8]"),
    ({"average": 4.0, "choices": (0, 4)}, "whole numbers of bits in 1..16"),
    ({"average": 4.0, "choices": (4, 17)}, "whole numbers of bits in 1..16"),
    ({"average": 4.0, "choices": (4.5, 8)}, "whole numbers of bits in 1..16"),
    ({"average": 4.0, "choices": ()}, "whole numbers of bits in 1..16"),
    ({"average": 4.0, "unit": "row"}, "must be one of layer, block"),
    ({"average": 4.0, "spread": 0.0}, "(0, 16]"),
    ({"average": 4.0, "group_size": -1}, "0 for one scale per row"),
    ({"average": 4.0, "edge_bits": 20}, "1..16"),
])
def test_settings_refuse_what_cannot_be_planned(options, message):
    with pytest.raises(InvalidSetting, match=re.escape(message)):
        BitsSettings(**options)


def test_choices_are_sorted_and_deduplicated():
    assert BitsSettings(4, (8, 2, 4, 2)).choices == (2, 4, 8)


@pytest.mark.parametrize(("label", "bits"), [
    ("float32", 32), ("bfloat16", 16), ("float16", 16), ("gptq int4 g128", 4), ("awq int4 g128", 4),
    ("compressed-tensors pack-quantized int3 group 64", 3), ("compressed-tensors int-quantized int8 per-channel", 8),
    ("gguf Q4_K", 4), ("gguf IQ2_XXS", 2), ("gguf Q8_0", 8), ("gguf F16", 16), ("gguf TQ1_0", 1),
    ("fp8-e4m3 block 128x128", 8), ("bnb nf4 double-quant", 4), ("bnb int8", 8), ("mxfp4", 4),
    ("weight_norm float32", 32), ("int8", 8), (None, None), ("something else", None),
])
def test_stored_bits_reads_every_format_label(label, bits):
    assert stored_bits(label) == bits


@pytest.mark.parametrize(("name", "unit"), [
    ("model.layers.3.self_attn.k_proj", "model.layers.3.self_attn.qkv_proj"),
    ("model.layers.3.mlp.up_proj", "model.layers.3.mlp.gate_up_proj"),
    ("model.layers.3.mlp.down_proj", "model.layers.3.mlp.down_proj"),
    ("q_proj", "qkv_proj"),
])
def test_fused_projections_share_a_unit(name, unit):
    assert fused_unit(name) == unit


def _mean_bits(plan):
    quantized = [entry for entry in plan["layers"] if entry["bits"] is not None]
    return Fraction(sum(entry["params"] * entry["bits"] for entry in quantized), sum(entry["params"] for entry in quantized))


@pytest.mark.parametrize("average", [2.0, 2.75, 3.0, 3.5, 4.0, 6.0, 8.0])
def test_the_plan_never_exceeds_the_budget_and_validates(report, average):
    plan = bits_plan(report, BitsSettings(average, (2, 3, 4, 8)))
    validate(plan)
    assert _mean_bits(plan) <= Fraction(average)
    assert plan["summary"]["weighted_mean"] == pytest.approx(float(_mean_bits(plan)))
    if average in (2.0, 3.0, 4.0, 8.0, 3.5):  # reachable: met exactly
        assert _mean_bits(plan) == Fraction(average)
    for entry in plan["layers"]:
        if entry["kind"] == "embedding" or entry["block"] is None:
            assert entry["bits"] is None and "not quantized" in entry["note"]


def test_fused_projections_and_blocks_share_one_width(report):
    plan = bits_plan(report, BitsSettings(3.5))
    for block in range(4):
        widths = {entry["name"].rsplit(".", 1)[1]: entry["bits"] for entry in plan["layers"] if entry["block"] == f"model.layers.{block}"}
        assert widths["q_proj"] == widths["k_proj"] == widths["v_proj"]
        assert widths["gate_proj"] == widths["up_proj"]
    plan = bits_plan(report, BitsSettings(3.5, unit="block"))
    for block in range(4):
        assert len({entry["bits"] for entry in plan["layers"] if entry["block"] == f"model.layers.{block}"}) == 1
    assert plan["summary"]["units"] == 4


def test_held_layers_count_in_the_average(report):
    plan = bits_plan(report, BitsSettings(6.0, (2, 3, 4, 8), embedding_bits=8, edge_bits=8))
    validate(plan)
    outside = [entry for entry in plan["layers"] if entry["block"] is None]
    edges = [entry for entry in plan["layers"] if entry["block"] in ("model.layers.0", "model.layers.3")]
    assert {entry["name"] for entry in outside} == {"model.embed_tokens", "lm_head"}
    assert all(entry["bits"] == 8 and "held at 8 bits" in entry["note"] for entry in outside + edges)
    assert _mean_bits(plan) <= Fraction(6) and plan["summary"]["held"] == len(outside) + len(edges)
    with pytest.raises(InvalidSetting, match="below what the held layers"):
        bits_plan(report, BitsSettings(2.5, (2, 3, 4, 8), embedding_bits=8))


def test_a_blockless_model_leaves_its_first_and_last_matrix_unless_held():
    import htsr_cli

    cnn = htsr_cli.analyze(FIXTURES / "tiny-cnn-trained.pth", xmin="peak")
    plan = bits_plan(cnn, BitsSettings(4.0))
    first, last = plan["layers"][0], plan["layers"][-1]
    assert first["bits"] is None and "first/last layer" in first["note"] and last["bits"] is None
    held = bits_plan(cnn, BitsSettings(4.0, edge_bits=8))
    assert held["layers"][0]["bits"] == held["layers"][-1]["bits"] == 8


def test_an_already_quantized_checkpoint_caps_the_widths(report):
    stored = dataclasses.replace(report, layers=[dataclasses.replace(layer, storage="gptq int4 g128") for layer in report.layers])
    plan = bits_plan(stored, BitsSettings(4.0, (2, 3, 4, 8)))
    assert plan["summary"]["max_bits"] == 4 and all(e["stored_bits"] == 4 for e in plan["layers"])
    with pytest.raises(HtsrError, match="is already quantized: its matrices hold at most 4.00 bits on average, fewer than --average 6"):
        bits_plan(stored, BitsSettings(6.0, (2, 3, 4, 8)))
    with pytest.raises(HtsrError, match="already quantized to 4 bits, fewer than the 8 asked"):
        bits_plan(stored, BitsSettings(4.0, (2, 3, 4, 8), embedding_bits=8))
    with pytest.raises(HtsrError, match="fewer than the smallest choice 8"):
        bits_plan(stored, BitsSettings(8.0, (8,)))


def test_smaller_alpha_units_get_at_least_as_many_bits_within_a_size(report):
    plan = bits_plan(report, BitsSettings(3.5))
    units = {}
    for entry in plan["layers"]:
        if entry["bits"] is not None:
            units.setdefault(entry["unit"], (entry["score"], entry["bits"], 0))
            score, bits, params = units[entry["unit"]]
            units[entry["unit"]] = (score, bits, params + entry["params"])
    by_size = {}
    for score, bits, params in units.values():
        by_size.setdefault(params, []).append((score, bits))
    for group in by_size.values():
        widths = [bits for _, bits in sorted(group)]
        assert widths == sorted(widths, reverse=True)


def test_the_schema_is_strict(report):
    plan = bits_plan(report, BitsSettings(3.0))
    plan["layers"][1]["bits"] = 17
    assert schema_errors(plan, "bits/1")
    plan = bits_plan(report, BitsSettings(3.0))
    plan["summary"]["extra"] = 1
    assert schema_errors(plan, "bits/1")


def test_llama_cpp_lines_name_every_planned_tensor_in_gguf(report):
    plan = bits_plan(report, BitsSettings(4.5, (2, 3, 4, 8), embedding_bits=8), model_type="llama")
    lines = llama_cpp_tensor_types(plan).split()
    planned = [entry for entry in plan["layers"] if entry["bits"] is not None]
    assert len(lines) == len(planned)
    expected = {
        "model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
        "model.layers.2.self_attn.q_proj.weight": "blk.2.attn_q.weight",
        "model.layers.2.self_attn.o_proj.weight": "blk.2.attn_output.weight",
        "model.layers.2.mlp.gate_proj.weight": "blk.2.ffn_gate.weight",
        "model.layers.2.mlp.down_proj.weight": "blk.2.ffn_down.weight",
    }
    for line, entry in zip(lines, planned):
        pattern, gguf_type = line.split("=")
        assert gguf_type == GGUF_TYPES[entry["bits"]]
        if entry["tensor"] in expected:
            assert re.fullmatch(pattern, expected[entry["tensor"]])
            if pattern.startswith("^blk"):  # anchored: blk.2 does not also match blk.12 or blk.20
                assert not re.search(pattern, expected[entry["tensor"]].replace("blk.2", "blk.12"))
                assert not re.search(pattern, expected[entry["tensor"]].replace("blk.2", "blk.20"))


def test_llama_cpp_refuses_a_width_without_a_ggml_type(report):
    plan = bits_plan(report, BitsSettings(7.0, (7,)))
    with pytest.raises(HtsrError, match="no llama.cpp type holds 7 bits"):
        llama_cpp_tensor_types(plan)


def test_the_llm_compressor_recipe_parses_and_names_every_planned_layer(report):
    plan = bits_plan(report, BitsSettings(6.0, (2, 3, 4, 16), group_size=4, embedding_bits=None))
    recipe = yaml.safe_load(llm_compressor_recipe(plan, "gptq"))
    groups = recipe["quant_stage"]["quant_modifiers"]["GPTQModifier"]["config_groups"]
    targeted = {target: group["weights"] for group in groups.values() for target in group["targets"]}
    for entry in plan["layers"]:
        module = entry["tensor"].removesuffix(".weight")
        if entry["bits"] is None or entry["bits"] == 16:
            assert module not in targeted
        else:
            weights = targeted[module]
            assert weights == {"num_bits": entry["bits"], "type": "int", "symmetric": True, "strategy": "group", "group_size": 4}
    assert sum(len(group["targets"]) for group in groups.values()) == len(targeted)  # each module in one group
    rtn = yaml.safe_load(llm_compressor_recipe(bits_plan(report, BitsSettings(4.0, (4,), group_size=0)), "rtn"))
    [group] = rtn["quant_stage"]["quant_modifiers"]["QuantizationModifier"]["config_groups"].values()
    assert group["weights"]["strategy"] == "channel" and "group_size" not in group["weights"]


def test_the_recipe_refuses_an_embedding(report):
    plan = bits_plan(report, BitsSettings(6.0, (4, 8), embedding_bits=8))
    with pytest.raises(HtsrError, match="an embedding planned at 8 bits"):
        llm_compressor_recipe(plan)


def test_the_recipe_targets_are_what_compressed_tensors_matches(report):
    """compressed-tensors (the reference) matches each target to exactly the module of that name."""
    from compressed_tensors.utils.match import match_name

    plan = bits_plan(report, BitsSettings(3.0))
    recipe = yaml.safe_load(llm_compressor_recipe(plan))
    targets = [t for g in recipe["quant_stage"]["quant_modifiers"]["GPTQModifier"]["config_groups"].values() for t in g["targets"]]
    names = [entry["name"] for entry in plan["layers"]]
    for target in targets:
        assert [name for name in names if match_name(name, target)] == [target]
    assert math.isclose(plan["summary"]["weighted_mean"], 3.0)
