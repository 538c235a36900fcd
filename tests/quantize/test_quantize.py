"""`htsr quantize`: RTN math, the compressed-tensors checkpoint it writes, and who reads it back.

The reference is the compressed-tensors package: what it decompresses from the
written files must equal, bit for bit, what RTN's own dequantization gives and
what htsr's reader gives.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import FIXTURES, assert_user_error, write_tiny_language_model
from htsr_cli.quantize.rtn import code_range, rtn_dequantize, rtn_error, rtn_quantize
from tests.results.test_schemas import validate

TINY_LLAMA = FIXTURES / "tiny-llama"
MIXED = {"q_proj": 2, "k_proj": 3, "v_proj": 4, "o_proj": 8, "gate_proj": 5, "up_proj": 6, "down_proj": 16}


def test_symmetric_codes_by_hand():
    weight = torch.tensor([[0.0, 7.5, -7.5, 3.2, 3.75, -1.8, 0.25, 0.0]])
    quantized = rtn_quantize(weight, 4, 4, symmetric=True, scale_dtype=torch.float32)
    # Group 1: max|w| = 7.5, s = 2 * 7.5 / 15 = 1; w/s = 0, 7.5, -7.5, 3.2 -> 0, 8 (clamped to 7), -8, 3.
    # Group 2: max|w| = 3.75, s = 0.5; w/s = 7.5, -3.6, 0.5, 0 -> 8 (clamped to 7), -4, 0 (half to even), 0.
    assert quantized.codes.tolist() == [[0, 7, -8, 3, 7, -4, 0, 0]]
    assert quantized.scale.tolist() == [[1.0, 0.5]]
    assert quantized.zero_point is None


def test_asymmetric_codes_by_hand():
    weight = torch.tensor([[0.5, 1.0, 2.0, 3.0]])  # min(w, 0) = 0, max 3: s = 0.2, z = round(-8 - 0) = -8
    quantized = rtn_quantize(weight, 4, 0, symmetric=False, scale_dtype=torch.float32)
    assert quantized.zero_point.tolist() == [[-8]]
    assert quantized.codes.tolist() == [[-6, -3, 2, 7]]  # round(w / 0.2) - 8 = 2.5 -> 2, 5, 10, 15
    assert torch.allclose(rtn_dequantize(quantized), torch.tensor([[0.4, 1.0, 2.0, 3.0]]))


@pytest.mark.parametrize(("bits", "symmetric"), [(b, s) for b in (1, 2, 3, 4, 5, 8) for s in (True, False) if (b, s) != (1, True)])
def test_every_weight_is_within_half_a_step(bits, symmetric):
    weight = torch.randn(37, 48, generator=torch.Generator().manual_seed(bits)) ** 3
    quantized = rtn_quantize(weight, bits, 16, symmetric, torch.float32)
    low, high = code_range(bits)
    assert quantized.codes.min() >= low and quantized.codes.max() <= high
    step = quantized.scale.repeat_interleave(16, dim=1)
    assert ((weight - rtn_dequantize(quantized)).abs() <= step / 2 * (1 + 1e-5)).all()  # float32 rounding of w / s
    expected = float(((weight - rtn_dequantize(quantized)) ** 2).sum(dtype=torch.float64))
    assert rtn_error(weight, bits, 16, symmetric) == pytest.approx(expected)


def test_grids_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="1-bit codes need an asymmetric grid"):
        rtn_quantize(torch.ones(2, 4), 1, 0, True, torch.float32)
    with pytest.raises(ValueError, match="do not fit"):
        rtn_quantize(torch.ones(2, 6), 4, 4, True, torch.float32)


def test_an_all_zero_group_gets_scale_one_and_zero_weights():
    quantized = rtn_quantize(torch.zeros(2, 8), 3, 4, True, torch.bfloat16)
    assert quantized.scale.eq(1).all() and rtn_dequantize(quantized).eq(0).all()


def test_more_bits_never_increase_the_error():
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    errors = [rtn_error(weight, bits, 32, True) for bits in range(2, 9)]
    assert errors == sorted(errors, reverse=True)


def _plan(path, source_plan, widths):
    """An htsr.bits/1 file: `source_plan`'s entries with widths by matrix name (others not planned)."""
    plan = json.loads(source_plan.read_text())
    for entry in plan["layers"]:
        leaf = entry["name"].rsplit(".", 1)[-1]
        entry["bits"] = widths.get(leaf) if entry["block"] is not None else None
    path.write_text(json.dumps(plan))
    return path


@pytest.fixture(scope="module")
def base_plan(tmp_path_factory):
    from typer.testing import CliRunner

    from htsr_cli.cli.app import app

    path = tmp_path_factory.mktemp("plan") / "bits.json"
    result = CliRunner().invoke(app, ["allocate", "bits", str(TINY_LLAMA), "--average", "4", "--group-size", "4", "-f", "json", "-o", str(path), "-q"])
    assert result.exit_code == 0, result.output
    return path


def _reference_decompress(directory, key):
    """What compressed-tensors itself decompresses `key` to, from the written files and config."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    config = QuantizationConfig.model_validate(json.loads((directory / "config.json").read_text())["quantization_config"])
    module = key.removesuffix(".weight")
    [group] = [group for group in config.config_groups.values() if module in group.targets]
    scheme = QuantizationScheme(targets=group.targets, weights=group.weights)
    index = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    prefix = module + "."
    parts = {}
    for name, shard in index.items():
        if name.startswith(prefix) and name[len(prefix):].startswith("weight_"):
            with safe_open(directory / shard, "pt") as handle:
                parts[name[len(prefix):]] = handle.get_tensor(name)
    return BaseCompressor.load_from_registry(config.format).decompress(parts, scheme)["weight"]


@pytest.mark.parametrize("symmetric", [True, False])
def test_the_written_checkpoint_reads_back_exactly(cli, tmp_path, base_plan, symmetric):
    from htsr_cli.checkpoints import open_checkpoint

    plan = _plan(tmp_path / "plan.json", base_plan, MIXED)
    out = tmp_path / "out"
    args = ["--plan", plan, "-o", out, "-q"] + ([] if symmetric else ["--asymmetric"])
    result = cli("quantize", TINY_LLAMA, *args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "htsr-quantize.json").read_text())
    validate(record)
    assert record["summary"]["quantized"] == 24 and record["summary"]["kept"] == 4  # down_proj at 16 bits stays
    with open_checkpoint(TINY_LLAMA) as original, open_checkpoint(out) as written:
        assert written.format_info()["format"] == "compressed-tensors"
        for layer in record["layers"]:
            key = layer["tensor"]
            if not layer["quantized"]:
                assert torch.equal(written.load(key), original.load(key))
                continue
            weight = original.load(key)
            ours = rtn_dequantize(rtn_quantize(weight, layer["bits"], 4, symmetric, weight.dtype))
            assert torch.equal(written.load(key), ours), key
            assert torch.equal(_reference_decompress(out, key), ours), key
            error = torch.linalg.vector_norm(weight - ours) / torch.linalg.vector_norm(weight)
            assert layer["relative_error"] == pytest.approx(float(error), rel=1e-5)
        for key in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.2.input_layernorm.weight"):
            assert torch.equal(written.load(key), original.load(key))
    stored = {}
    for shard in sorted(out.glob("*.safetensors")):
        stored.update(load_file(shard))  # safetensors' own reader accepts every file
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == set(stored)
    assert "model.layers.0.self_attn.q_proj.weight" not in stored
    assert stored["model.layers.0.self_attn.q_proj.weight_packed"].shape == (64, math.ceil(64 * 2 / 32))
    assert ("model.layers.0.self_attn.q_proj.weight_zero_point" in stored) is not symmetric


def test_transformers_runs_the_quantized_model_as_htsr_reads_it(cli, tmp_path, base_plan):
    """The symmetric checkpoint loads in transformers, and its logits are those of the dense
    model holding htsr's dequantized weights."""
    import transformers

    from htsr_cli.checkpoints import open_checkpoint

    plan = _plan(tmp_path / "plan.json", base_plan, MIXED)
    out = tmp_path / "out"
    assert cli("quantize", TINY_LLAMA, "--plan", plan, "-o", out, "-q").exit_code == 0
    quantized = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    dense = transformers.AutoModelForCausalLM.from_pretrained(TINY_LLAMA).eval()
    with open_checkpoint(out) as written, torch.no_grad():
        dense.load_state_dict({key: written.load(key) for key in dense.state_dict()})
        ids = torch.tensor([[1, 7, 42, 99, 3, 250]])
        assert torch.allclose(quantized(ids).logits, dense(ids).logits, atol=1e-5)


def test_a_bfloat16_model_keeps_bfloat16_scales(cli, tmp_path):
    from htsr_cli.checkpoints import open_checkpoint

    model = tmp_path / "llama-bf16"
    write_tiny_language_model(model, "llama")
    import transformers

    transformers.AutoModelForCausalLM.from_pretrained(model).to(torch.bfloat16).save_pretrained(model)
    plan = tmp_path / "bits.json"
    assert cli("allocate", "bits", model, "--average", "3", "--choices", "3", "--group-size", "16", "-f", "json", "-o", plan, "-q").exit_code == 0
    out = tmp_path / "out"
    result = cli("quantize", model, "--plan", plan, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    key = "model.layers.1.mlp.up_proj.weight"
    stored = {}
    for shard in out.glob("*.safetensors"):
        stored.update(load_file(shard))
    assert stored[key.replace("weight", "weight_scale")].dtype == torch.bfloat16
    with open_checkpoint(model) as original, open_checkpoint(out) as written:
        weight = original.load(key)
        ours = rtn_dequantize(rtn_quantize(weight, 3, 16, True, torch.bfloat16))
        assert torch.equal(written.load(key), ours)


def test_overwrite_replaces_only_an_earlier_quantize_output(cli, tmp_path, base_plan):
    out = tmp_path / "out"
    assert cli("quantize", TINY_LLAMA, "--plan", base_plan, "-o", out, "-q").exit_code == 0
    assert_user_error(cli("quantize", TINY_LLAMA, "--plan", base_plan, "-o", out, "-q"), "pass --overwrite")
    assert cli("quantize", TINY_LLAMA, "--plan", base_plan, "-o", out, "--overwrite", "-q").exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert_user_error(
        cli("quantize", TINY_LLAMA, "--plan", base_plan, "-o", other, "--overwrite", "-q"),
        "--overwrite replaces only an earlier htsr quantize output (one with htsr-quantize.json listing every file in it)",
    )


@pytest.mark.parametrize(("widths", "options", "needle"), [
    ({"q_proj": 12}, [], "is planned at 12 bits; compressed-tensors packs 1..8 bits"),
    ({"q_proj": 1}, [], "is planned at 1 bit, whose symmetric grid"),
    ({"down_proj": 4}, ["--group-size", "8"], "has 172 input columns, not a multiple of --group-size 8"),
])
def test_plans_htsr_cannot_write_are_refused(cli, tmp_path, base_plan, widths, options, needle):
    plan = _plan(tmp_path / "plan.json", base_plan, widths)
    assert_user_error(cli("quantize", TINY_LLAMA, "--plan", plan, "-o", tmp_path / "out", *options), needle)
    assert not (tmp_path / "out").exists()


def test_an_embedding_in_the_plan_is_refused(cli, tmp_path):
    plan = tmp_path / "bits.json"
    assert cli("allocate", "bits", TINY_LLAMA, "--average", "6", "--choices", "4,8", "--embedding-bits", "8", "-f", "json", "-o", plan, "-q").exit_code == 0
    assert_user_error(cli("quantize", TINY_LLAMA, "--plan", plan, "-o", tmp_path / "out"), "is an embedding planned at 8 bits")


def test_bad_inputs_are_one_line_and_exit_2(cli, tmp_path, base_plan):
    assert_user_error(cli("quantize", TINY_LLAMA, "--plan", tmp_path / "none.json", "-o", tmp_path / "o"), "no such file")
    assert_user_error(cli("quantize", TINY_LLAMA, "--plan", base_plan, "-o", TINY_LLAMA / "sub"), "-o")
    assert_user_error(
        cli("quantize", TINY_LLAMA / "model-00001-of-00004.safetensors", "--plan", base_plan, "-o", tmp_path / "o"),
        "needs a Hugging Face directory",
    )
    other = tmp_path / "other"
    write_tiny_language_model(other, "llama")
    assert_user_error(cli("quantize", other, "--plan", base_plan, "-o", tmp_path / "o"), "a plan for another model?")
    quantized = tmp_path / "q"
    assert cli("quantize", TINY_LLAMA, "--plan", base_plan, "-o", quantized, "-q").exit_code == 0
    assert_user_error(cli("quantize", quantized, "--plan", base_plan, "-o", tmp_path / "o"), "is already quantized (compressed-tensors)")
    sparsity = tmp_path / "sparsity.json"
    sparsity.write_text(json.dumps({"schema": "htsr.sparsity/1", "layers": []}))
    assert_user_error(cli("quantize", TINY_LLAMA, "--plan", sparsity, "-o", tmp_path / "o"), "not an htsr.bits/1 file")
