"""Mixture-of-Experts (issue 10, section 2): fused expert tensors are E separate linear layers.

In memory, transformers 5 holds experts fused (`mlp.experts.gate_up_proj` [E, 2I, H]);
its save_pretrained writes one matrix per expert. Both must give the same layers,
names and alphas. Fused tensors on disk (gpt-oss) and in plain state dicts follow
a generic rule: `...experts.<i>.<proj>`, gate_up split into gate and up.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import htsr_cli
from htsr_cli.engine import pipeline as analysis
from htsr_cli.checkpoints import Checkpoint, TensorInfo
from htsr_cli.checkpoints.sharded import ShardedCheckpoint
from htsr_cli.spectra.fit import fit_power_law
from htsr_cli.spectra.matrices import matrix_specs
from htsr_cli.settings import AnalyzeSettings
from htsr_cli.spectra.solver import Eigensolver

EXPERTS, HIDDEN, INTERMEDIATE = 4, 64, 48


def qwen3_moe():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    return Qwen3MoeForCausalLM(Qwen3MoeConfig(
        hidden_size=HIDDEN, intermediate_size=128, moe_intermediate_size=INTERMEDIATE, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_experts=EXPERTS, num_experts_per_tok=2,
        vocab_size=100, head_dim=16, tie_word_embeddings=False,
    ))


def mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(1)
    return MixtralForCausalLM(MixtralConfig(
        hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=EXPERTS, vocab_size=100, tie_word_embeddings=False,
    ))


def gpt_oss():
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(2)
    return GptOssForCausalLM(GptOssConfig(
        hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=EXPERTS, vocab_size=100, head_dim=16, tie_word_embeddings=False,
    ))


def layers_of(report: htsr_cli.Report) -> list[tuple]:
    return [(layer.name, layer.kind, tuple(layer.shape), layer.status, layer.alpha) for layer in report.layers]


@pytest.mark.parametrize("make", [qwen3_moe, mixtral, gpt_oss])
def test_in_memory_model_gives_the_layers_and_alphas_of_its_saved_directory(tmp_path, make):
    model = make()
    model.save_pretrained(tmp_path)
    from_memory, from_disk = htsr_cli.analyze(model), htsr_cli.analyze(tmp_path)
    assert layers_of(from_memory) == layers_of(from_disk)
    # 2 decoder layers x (4 attention + 3 x 4 experts + router) + embedding + head
    assert len(from_memory.layers) == 2 * (4 + 3 * EXPERTS + 1) + 2
    experts = [layer for layer in from_memory.layers if ".experts." in layer.name]
    assert len(experts) == 2 * 3 * EXPERTS and all(layer.kind == "linear" for layer in experts)
    assert all(layer.alpha is not None for layer in experts)


def test_saved_names_are_those_transformers_writes(tmp_path):
    names = {layer.name for layer in htsr_cli.analyze(mixtral()).layers}
    assert "model.layers.1.block_sparse_moe.experts.3.w1" in names  # gate rows of gate_up_proj[3]
    assert "model.layers.1.block_sparse_moe.experts.3.w3" in names  # up rows
    assert "model.layers.1.block_sparse_moe.experts.3.w2" in names  # down_proj[3]
    assert "model.layers.1.block_sparse_moe.gate" in names  # the router: an ordinary linear layer
    names = {layer.name for layer in htsr_cli.analyze(qwen3_moe()).layers}
    assert {"model.layers.0.mlp.experts.2.gate_proj", "model.layers.0.mlp.experts.2.up_proj",
            "model.layers.0.mlp.experts.2.down_proj", "model.layers.0.mlp.gate"} <= names


def test_expert_matrices_are_the_slices_save_pretrained_writes():
    """gate = rows 0..I-1 of gate_up_proj[i], up = rows I..2I-1, down = down_proj[i]."""
    model = qwen3_moe()
    fused = model.model.layers[0].mlp.experts
    report = htsr_cli.analyze(model)
    solver = Eigensolver.create("cpu")
    for name, matrix in [
        ("gate_proj", fused.gate_up_proj[2, :INTERMEDIATE]),
        ("up_proj", fused.gate_up_proj[2, INTERMEDIATE:]),
        ("down_proj", fused.down_proj[2]),
    ]:
        esd = solver.pooled_eigenvalues(matrix.detach()[None])
        layer = report.layer(f"model.layers.0.mlp.experts.2.{name}")
        assert tuple(layer.shape) == tuple(matrix.shape)
        assert layer.alpha == fit_power_law(esd, "ks").alpha and layer.lambda_max == float(esd[-1])


def test_gpt_oss_gate_and_up_are_interleaved_columns():
    """gpt-oss stores gate_up_proj as [E, H, 2I] (in, out) with gate = [..., ::2], up = [..., 1::2]."""
    model = gpt_oss()
    fused = model.model.layers[1].mlp.experts.gate_up_proj.detach()
    report = htsr_cli.analyze(model)
    solver = Eigensolver.create("cpu")
    for name, matrix in [("gate_proj", fused[3][:, ::2]), ("up_proj", fused[3][:, 1::2])]:
        layer = report.layer(f"model.layers.1.mlp.experts.3.{name}")
        assert tuple(layer.shape) == (HIDDEN, INTERMEDIATE)
        assert layer.alpha == fit_power_law(solver.pooled_eigenvalues(matrix[None]), "ks").alpha


def test_fused_tensors_on_disk_equal_per_expert_tensors(tmp_path):
    g = torch.Generator().manual_seed(3)
    gate_up = torch.randn(EXPERTS, 2 * INTERMEDIATE, HIDDEN, generator=g).to(torch.bfloat16)
    down = torch.randn(EXPERTS, HIDDEN, INTERMEDIATE, generator=g).to(torch.bfloat16)
    fused = {"layers.0.mlp.experts.gate_up_proj": gate_up, "layers.0.mlp.experts.down_proj": down}
    split = {}
    for i in range(EXPERTS):
        split[f"layers.0.mlp.experts.{i}.gate_proj.weight"] = gate_up[i, :INTERMEDIATE].clone()
        split[f"layers.0.mlp.experts.{i}.up_proj.weight"] = gate_up[i, INTERMEDIATE:].clone()
        split[f"layers.0.mlp.experts.{i}.down_proj.weight"] = down[i].clone()
    save_file(fused, tmp_path / "fused.safetensors")
    save_file(split, tmp_path / "split.safetensors")
    from_fused = {layer.name: layer for layer in htsr_cli.analyze(tmp_path / "fused.safetensors").layers}
    from_split = {layer.name: layer for layer in htsr_cli.analyze(tmp_path / "split.safetensors").layers}
    assert set(from_fused) == set(from_split) and len(from_fused) == 3 * EXPERTS
    for name, layer in from_split.items():
        other = from_fused[name]
        assert (other.alpha, other.lambda_max, other.shape, other.storage) == (
            layer.alpha, layer.lambda_max, layer.shape, "bfloat16",
        )
        assert other.tensor == ("layers.0.mlp.experts." + ("down_proj" if "down" in name else "gate_up_proj"))


def test_a_fused_tensor_is_read_once(tmp_path, monkeypatch):
    weights = {"mlp.experts.gate_up_proj": torch.randn(8, 64, 32), "mlp.experts.down_proj": torch.randn(8, 32, 32)}
    save_file(weights, tmp_path / "model.safetensors")
    reads: list[str] = []
    original = ShardedCheckpoint.load

    def counted(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(ShardedCheckpoint, "load", counted)
    report = htsr_cli.analyze(tmp_path / "model.safetensors", profile=True)
    assert len(report.layers) == 8 * 3
    assert sorted(reads) == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    assert report.timings.batches == 1  # gate, up and down of every expert are all 32 x 32: one batched solve


def test_the_generic_rule_names_and_never_makes_conv1d():
    specs = matrix_specs("blocks.2.experts.w1.weight", (3, 20, 16), torch.float32, 10)
    assert [spec.name for spec in specs] == ["blocks.2.experts.0.w1", "blocks.2.experts.1.w1", "blocks.2.experts.2.w1"]
    assert {(spec.kind, spec.shape, spec.block) for spec in specs} == {("linear", (20, 16), "blocks.2")}
    specs = matrix_specs("moe.experts.weight", (2, 20, 16), torch.bfloat16, 10)
    assert [spec.name for spec in specs] == ["moe.experts.0", "moe.experts.1"]
    specs = matrix_specs("m.experts.gate_up_proj", (2, 40, 16), torch.bfloat16, 10)
    assert [(s.name, s.shape) for s in specs] == [
        ("m.experts.0.gate_proj", (20, 16)), ("m.experts.0.up_proj", (20, 16)),
        ("m.experts.1.gate_proj", (20, 16)), ("m.experts.1.up_proj", (20, 16)),
    ]
    assert matrix_specs("m.experts.gate_up_proj_bias", (2, 40), torch.float32, 10) == []
    assert matrix_specs("m.experts.gate_up_proj_scales", (2, 40, 4), torch.uint8, 10) == []
    assert [s.kind for s in matrix_specs("conv.weight", (24, 32, 5), torch.float32, 10)] == ["conv1d"]
    assert [s.skip_reason for s in matrix_specs("m.experts.down_proj", (2, 3, 40), torch.float32, 10)] == [
        "3 eigenvalues < min_evals 10"
    ] * 2


def test_state_dict_of_a_moe_model_uses_the_generic_rule(tmp_path):
    """A plain state dict has no transformers mapping: Qwen's fused names still expand like its saved files."""
    model = qwen3_moe()
    model.save_pretrained(tmp_path)
    from_state_dict = htsr_cli.analyze({key: value.detach() for key, value in model.state_dict().items()})
    by_name = {layer.name: layer.alpha for layer in htsr_cli.analyze(tmp_path).layers}
    assert {layer.name: layer.alpha for layer in from_state_dict.layers} == by_name


class DequantizingCheckpoint(Checkpoint):
    """A packed format (as the MXFP4 reader presents gpt-oss experts): int8 codes and a scale per
    expert, stored under one key, dequantized in `load_for` to the logical [E, H, 2I] tensor."""

    model_type = "gpt_oss"

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor):
        self.source, self.codes, self.scales = "<packed>", codes, scales

    def tensors(self):
        return [TensorInfo("model.layers.0.mlp.experts.gate_up_proj", tuple(self.codes.shape), torch.bfloat16, "int8 per-expert")]

    def load(self, key):
        raise AssertionError("packed tensors are only read through load_for")

    def load_for(self, key, move):
        return (move(self.codes).to(torch.float32) * move(self.scales)[:, None, None]).to(torch.bfloat16)

    def close(self):
        pass


def test_fused_experts_from_a_packed_reader_expand_through_load_for():
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(-127, 128, (EXPERTS, HIDDEN, 2 * INTERMEDIATE), generator=g, dtype=torch.int8)
    scales = torch.rand(EXPERTS, generator=g) / 64
    checkpoint = DequantizingCheckpoint(codes, scales)
    settings = AnalyzeSettings()
    specs = analysis.plan_layers(checkpoint, settings)
    solved = analysis.solve_layers(checkpoint, specs, settings, Eigensolver.create("cpu"))
    assert [layer.name for layer in solved.layers] == [
        f"model.layers.0.mlp.experts.{i}.{half}_proj" for half in ("gate", "up") for i in range(EXPERTS)
    ]
    assert {layer.storage for layer in solved.layers} == {"int8 per-expert"}
    dequantized = (codes.float() * scales[:, None, None]).to(torch.bfloat16)
    up_2 = next(layer for layer in solved.layers if layer.name.endswith("experts.2.up_proj"))
    esd = Eigensolver.create("cpu").pooled_eigenvalues(dequantized[2][:, 1::2][None])
    assert up_2.alpha == fit_power_law(esd, "ks").alpha
