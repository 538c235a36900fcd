"""htsr prune as a library: real checkpoint layouts, the calibration activations and Wanda, all-or-nothing output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.conftest import FIXTURES
from htsr_cli.errors import HtsrError
from htsr_cli.pruning import CalibrationSettings, PruneSettings, prune_checkpoint
from htsr_cli.pruning.sparsities import owl_sparsities, prunable, scope_entries
from htsr_cli.pruning.calibration import calibration_windows, run_blocks
from htsr_cli.pruning.masks import wanda_scores
from htsr_cli.checkpoints import open_checkpoint


# ---------------------------------------------------------------- magnitude on real layouts


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def test_magnitude_on_a_sharded_directory_keeps_the_layout_and_every_other_byte(tmp_path):
    source = FIXTURES / "tiny-llama"
    out = tmp_path / "pruned"
    record = prune_checkpoint(str(source), out, PruneSettings(target=0.6, allocation="uniform"))
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in source.iterdir()), "htsr-prune.json"])
    assert (out / "model.safetensors.index.json").read_bytes() == (source / "model.safetensors.index.json").read_bytes()
    counts = {layer["tensor"]: layer["pruned"] for layer in record["layers"] if layer["pruned"] is not None}
    assert len(counts) == 28  # q k v o gate up down x 4 blocks; embeddings and head are not pruned
    for shard in sorted(source.glob("*.safetensors")):
        before, after = _tensors(shard), _tensors(out / shard.name)
        assert before.keys() == after.keys()
        raw_in, raw_out = shard.read_bytes(), (out / shard.name).read_bytes()
        header = 8 + int.from_bytes(raw_in[:8], "little")
        assert raw_in[:header] == raw_out[:header]  # same header: names, dtypes, offsets
        for key, tensor in before.items():
            if key not in counts:
                assert _bytes(after[key]) == _bytes(tensor), key
                continue
            zeroed = after[key] == 0
            assert int(zeroed.sum()) == counts[key]
            assert abs(counts[key] - 0.6 * tensor.numel()) < 1
            assert torch.equal(after[key][~zeroed], tensor[~zeroed])  # the kept weights are untouched
            assert tensor[zeroed].abs().max() <= tensor[~zeroed].abs().min()
    summary = record["summary"]
    assert summary["zeros"] == round(0.6 * summary["params"])
    assert abs(summary["achieved"] - 0.6) < 1e-4
    assert json.loads((out / "htsr-prune.json").read_text())["summary"] == summary


def test_alphapruning_ratios_are_applied_per_matrix_and_meet_the_global_target(tmp_path):
    record = prune_checkpoint(str(FIXTURES / "tiny-llama"), tmp_path / "out", PruneSettings(target=0.7))
    pruned = [layer for layer in record["layers"] if layer["pruned"] is not None]
    assert len({round(layer["target_ratio"], 9) for layer in pruned}) == 4  # one per block
    for layer in pruned:
        assert abs(layer["pruned"] - layer["target_ratio"] * layer["params"]) < 1
        assert layer["achieved_ratio"] == layer["pruned"] / layer["params"]
        assert layer["alpha"] is not None and layer["score"] is not None
        assert layer["method"] == "magnitude" and layer["allocation"] == "alphapruning"
    assert abs(record["summary"]["achieved"] - 0.7) < 1e-4
    assert record["settings"]["alphapruning"] == {
        "epsilon": 0.3, "granularity": "block", "clip": True, "metric": "alpha", "xmin": "peak",
    }


def test_pruned_directory_loads_with_transformers_and_runs(tmp_path, tiny_lms):
    import transformers

    out = tmp_path / "pruned"
    prune_checkpoint(str(tiny_lms["llama"]), out, PruneSettings(target=0.5, allocation="uniform"))
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert float((model.model.layers[1].mlp.up_proj.weight == 0).float().mean()) == pytest.approx(0.5, abs=1 / 2048)
    logits = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
    assert logits.shape == (1, 4, 95) and torch.isfinite(logits).all()
    assert (out / "tokenizer.json").read_bytes() == (tiny_lms["llama"] / "tokenizer.json").read_bytes()


def test_single_safetensors_file_and_torch_file_with_its_container(tmp_path):
    state = {
        "blocks.0.fc.weight": torch.randn(40, 30, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16),
        "blocks.1.fc.weight": torch.randn(40, 30, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16),
        "blocks.1.fc.bias": torch.randn(40),
        "head.weight": torch.randn(5, 40),
    }
    single = tmp_path / "weights.safetensors"
    save_file(state, str(single), metadata={"format": "pt"})
    record = prune_checkpoint(str(single), tmp_path / "a", PruneSettings(target=0.5, allocation="uniform"))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["htsr-prune.json", "weights.safetensors"]
    after = _tensors(tmp_path / "a" / "weights.safetensors")
    assert after["blocks.1.fc.weight"].dtype == torch.bfloat16
    assert int((after["blocks.1.fc.weight"] == 0).sum()) == 600
    # the first weight layer (alone in its block: the stem) and the head keep their weights
    assert _bytes(after["blocks.0.fc.weight"]) == _bytes(state["blocks.0.fc.weight"])
    assert _bytes(after["head.weight"]) == _bytes(state["head.weight"])
    assert record["files"]["weights"] == ["weights.safetensors"]

    lightning = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}, lightning)
    prune_checkpoint(str(lightning), tmp_path / "b", PruneSettings(target=0.5, allocation="uniform"))
    saved = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 7 and set(saved["state_dict"]) == {f"module.{k}" for k in state}
    pruned = saved["state_dict"]["module.blocks.1.fc.weight"]
    assert pruned.dtype == torch.bfloat16 and int((pruned == 0).sum()) == 600
    assert torch.equal(saved["state_dict"]["module.blocks.1.fc.bias"], state["blocks.1.fc.bias"])
    assert torch.equal(torch.load(lightning, weights_only=True)["state_dict"]["module.blocks.1.fc.weight"],
                       state["blocks.1.fc.weight"])  # the input file is never written to


def test_other_weight_formats_are_left_out_and_listed(tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    for path in (FIXTURES / "tiny-llama").iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    (source / "onnx").mkdir()
    (source / "onnx" / "model.onnx").write_bytes(b"dense")
    (source / "README.md").write_text("card")
    record = prune_checkpoint(str(source), tmp_path / "out", PruneSettings(target=0.5, allocation="uniform"))
    assert record["files"]["left_out"] == [{"path": "onnx/model.onnx", "reason": "weights in another format, not pruned"}]
    assert "README.md" in record["files"]["copied"] and not (tmp_path / "out" / "onnx").exists()


def test_allocation_file_is_applied_and_checked(tmp_path, cli):
    plan = tmp_path / "plan.json"
    assert cli("allocate", "sparsity", FIXTURES / "tiny-llama", "--target", "0.6", "-f", "json", "-o", plan).exit_code == 0
    record = prune_checkpoint(str(FIXTURES / "tiny-llama"), tmp_path / "out", PruneSettings(target=None, allocation=str(plan)))
    wanted = {layer["tensor"]: layer["sparsity"] for layer in json.loads(plan.read_text())["layers"] if layer["sparsity"]}
    got = {layer["tensor"]: layer["target_ratio"] for layer in record["layers"] if layer["target_ratio"] is not None}
    assert got == pytest.approx(wanted)
    assert record["summary"]["target"] == pytest.approx(0.6) and abs(record["summary"]["achieved"] - 0.6) < 1e-4
    with pytest.raises(HtsrError, match="disagrees"):
        prune_checkpoint(str(FIXTURES / "tiny-llama"), tmp_path / "x", PruneSettings(target=0.5, allocation=str(plan)))
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- calibration and Wanda


def _hooked_dense_norms(model_dir: Path, windows: torch.Tensor, block_path: str, blocks: int):
    """||X_j|| of every linear input in every block, from hooks on the whole dense transformers model."""
    import transformers

    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for index in range(blocks):
        block = model.get_submodule(f"{block_path}.{index}")
        for name, module in block.named_modules():
            if module.__class__.__name__ in ("Linear", "Conv1D"):
                key = f"{index}.{name}"

                def hook(_m, inputs, _o, key=key):
                    x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
                    sums[key] = sums.get(key, 0) + x.pow(2).sum(0)

                handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for row in windows:
            model(input_ids=row.unsqueeze(0))
    return model, {key: value.sqrt() for key, value in sums.items()}


@pytest.mark.parametrize("kind,block_path", [("llama", "layers"), ("gpt2", "h"), ("bert", "encoder.layer")])
def test_calibration_input_norms_equal_hooks_on_the_whole_model(kind, block_path, tiny_lms, calibration_text):
    from htsr_cli.lm.language_models import load_tokenizer

    directory = tiny_lms[kind]
    settings = CalibrationSettings(calibration_text, samples=4, seq_len=24)
    windows = calibration_windows(load_tokenizer(directory, kind, "test"), settings)
    model, expected = _hooked_dense_norms(directory, windows, block_path, 3)
    seen = {}

    def visit(index, name, linears):
        for linear in linears:
            relative = linear.key.split(f"{index}.", 1)[1].removesuffix(".weight")
            seen[f"{index}.{relative}"] = (linear.input_norms.clone(), wanda_scores(linear.weight, linear.input_norms))
        return False  # dense: every block sees the dense model's activations

    with open_checkpoint(str(directory)) as checkpoint:
        keys = [item["tensor"] for item in prunable(scope_entries(checkpoint.tensors()))]
        run_blocks(directory, kind, checkpoint, keys, settings, torch.device("cpu"), visit)
    assert set(seen) == set(expected) and len(seen) >= 12
    for key, (norms, scores) in seen.items():
        torch.testing.assert_close(norms, expected[key], rtol=1e-5, atol=1e-6)
        module = model.get_submodule(f"{block_path}.{key}")
        weight = module.weight.t() if module.__class__.__name__ == "Conv1D" else module.weight
        torch.testing.assert_close(scores, weight.detach().abs().double() * expected[key], rtol=1e-5, atol=1e-6)


def test_wanda_prunes_each_output_row_by_its_hooked_scores_block_after_pruned_block(tmp_path, tiny_lms, calibration_text):
    import transformers

    directory = tiny_lms["llama"]
    settings = PruneSettings(
        target=0.5, allocation="uniform", method="wanda",
        calibration=CalibrationSettings(calibration_text, samples=4, seq_len=24),
    )
    out = tmp_path / "wanda"
    record = prune_checkpoint(str(directory), out, settings)
    assert abs(record["summary"]["achieved"] - 0.5) < 1e-4
    pruned = transformers.AutoModel.from_pretrained(out)
    dense = transformers.AutoModel.from_pretrained(directory)
    from htsr_cli.lm.language_models import load_tokenizer

    windows = calibration_windows(load_tokenizer(directory, "llama", "test"), settings.calibration)
    for index in range(3):
        # block `index` saw blocks 0..index-1 pruned and itself dense: build exactly that model
        model = transformers.AutoModel.from_pretrained(directory).eval()
        for earlier in range(index):
            model.layers[earlier].load_state_dict(pruned.layers[earlier].state_dict())
        norms = {}

        def hook(module, inputs, _o):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            norms[module] = norms.get(module, 0) + x.pow(2).sum(0)

        handles = [m.register_forward_hook(hook) for m in model.layers[index].modules() if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for row in windows:
                model(input_ids=row.unsqueeze(0))
        for handle in handles:
            handle.remove()
        for name, module in model.layers[index].named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            scores = module.weight.detach().abs().double() * norms[module].sqrt()
            kept = pruned.layers[index].get_submodule(name).weight.detach()
            zeroed = kept == 0
            rows, cols = kept.shape
            assert zeroed.sum(dim=1).tolist() == [cols // 2] * rows  # 50% of every output row
            for row in range(rows):
                assert scores[row][zeroed[row]].max() <= scores[row][~zeroed[row]].min()
            original = dense.layers[index].get_submodule(name).weight.detach()
            assert torch.equal(kept[~zeroed], original[~zeroed])


def test_wanda_on_gpt2_compares_weights_within_each_output_column_of_conv1d(tmp_path, tiny_lms, calibration_text):
    settings = PruneSettings(
        target=0.5, allocation="uniform", method="wanda",
        calibration=CalibrationSettings(calibration_text, samples=2, seq_len=16),
    )
    prune_checkpoint(str(tiny_lms["gpt2"]), tmp_path / "out", settings)
    weight = _tensors(tmp_path / "out" / "model.safetensors")["transformer.h.1.attn.c_attn.weight"]  # [in 32, out 96]
    assert (weight == 0).sum(dim=0).tolist() == [16] * 96


def test_owl_outlier_ratios_come_from_the_dense_activations(tmp_path, tiny_lms, calibration_text):
    from htsr_cli.lm.language_models import load_tokenizer

    directory = tiny_lms["llama"]
    calibration = CalibrationSettings(calibration_text, samples=4, seq_len=24)
    record = prune_checkpoint(
        str(directory), tmp_path / "owl", PruneSettings(target=0.6, allocation="owl", calibration=calibration)
    )
    windows = calibration_windows(load_tokenizer(directory, "llama", "test"), calibration)
    model, norms = _hooked_dense_norms(directory, windows, "layers", 3)
    ratios = []
    for index in range(3):
        parts = []
        for name, module in model.layers[index].named_modules():
            if isinstance(module, torch.nn.Linear):
                parts.append(module.weight.detach().abs().double() * norms[f"{index}.{name}"])
        scores = torch.cat([part.flatten() for part in parts])
        ratios.append(100.0 * float((scores > 5 * scores.mean()).sum()) / scores.numel())
    by_block = {layer["block"]: layer for layer in record["layers"] if layer["target_ratio"] is not None}
    got = [by_block[f"model.layers.{i}"]["outlier_ratio"] for i in range(3)]
    assert got == pytest.approx(ratios)
    expected = owl_sparsities(ratios, [7168] * 3, 0.6, 0.08)
    assert [by_block[f"model.layers.{i}"]["target_ratio"] for i in range(3)] == pytest.approx(expected)


# ---------------------------------------------------------------- all or nothing


def test_an_interrupted_write_leaves_neither_output_nor_temporary_directory(tmp_path, monkeypatch):
    from htsr_cli.pruning import prune as prune_module

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_module, "files_record", interrupted)  # interrupted while copying the other files
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoint(str(FIXTURES / "tiny-llama"), tmp_path / "out", PruneSettings(target=0.5, allocation="uniform"))
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_an_earlier_output(tmp_path):
    out = tmp_path / "out"
    prune_checkpoint(str(FIXTURES / "tiny-llama"), out, PruneSettings(target=0.5, allocation="uniform"))
    record = prune_checkpoint(
        str(FIXTURES / "tiny-llama"), out, PruneSettings(target=0.3, allocation="uniform", overwrite=True)
    )
    assert json.loads((out / "htsr-prune.json").read_text())["summary"] == record["summary"]
    assert abs(record["summary"]["achieved"] - 0.3) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
