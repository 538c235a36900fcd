"""Which matrices AlphaPruning (and every prune allocation) touches, on the key layouts of real architectures.

The state dicts are built with plain torch modules named as torchvision, timm and
transformers name theirs, so the blocks and the stem/head rule are checked on
the layouts users feed in (algorithms.md sections 7 and 8).
"""

from __future__ import annotations

import torch
from torch import nn

from htsr_cli.checkpoints import open_checkpoint
from htsr_cli.pruning import PruneSettings, prune_checkpoint
from htsr_cli.pruning.sparsities import prunable, scope_entries
from tests.conftest import FIXTURES

ENDS = ("first layer, not pruned (--include-ends prunes it)", "last layer, not pruned (--include-ends prunes it)")


def flat_sequential_cnn() -> nn.Module:
    """VGG/MobileNet-style: one flat `features` Sequential and a flat `classifier`."""
    torch.manual_seed(0)
    model = nn.Module()
    model.features = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(),
    )
    model.classifier = nn.Sequential(nn.Dropout(), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    return model


def entries_of(tmp_path, state: dict[str, torch.Tensor], include_ends: bool = False) -> dict[str, tuple[str | None, str | None]]:
    path = tmp_path / "model.pth"
    torch.save(state, path)
    checkpoint = open_checkpoint(str(path))
    try:
        return {item["name"]: (item["block"], item["note"]) for item in scope_entries(checkpoint.tensors(), include_ends)}
    finally:
        checkpoint.close()


def shapes(**named: tuple[int, ...]) -> dict[str, torch.Tensor]:
    return {name.replace("__", ".") + ".weight": torch.randn(*shape) for name, shape in named.items()}


def test_a_flat_sequential_cnn_keeps_its_stem_and_classifier(tmp_path):
    state = flat_sequential_cnn().state_dict()
    entries = entries_of(tmp_path, state)
    assert entries == {
        "features.0": ("features.0", ENDS[0]),
        "features.3": ("features.3", None),
        "features.5": ("features.5", None),
        "classifier.1": ("classifier.1", None),
        "classifier.3": ("classifier.3", ENDS[1]),
    }
    included = entries_of(tmp_path, state, include_ends=True)
    assert all(note is None for _, note in included.values())


def test_mobilenet_v2_blocks_are_the_features_entries(tmp_path):
    state = shapes(
        features__0__0=(32, 3, 3, 3),  # stem ConvBNReLU
        features__1__conv__0__0=(32, 1, 3, 3), features__1__conv__1=(16, 32, 1, 1),
        features__2__conv__0__0=(96, 16, 1, 1), features__2__conv__1__0=(96, 1, 3, 3), features__2__conv__2=(24, 96, 1, 1),
        features__18__0=(1280, 24, 1, 1),
        classifier__1=(1000, 1280),
    )
    entries = entries_of(tmp_path, state)
    assert {name: block for name, (block, _) in entries.items()} == {
        "features.0.0": "features.0", "features.1.conv.0.0": "features.1", "features.1.conv.1": "features.1",
        "features.2.conv.0.0": "features.2", "features.2.conv.1.0": "features.2", "features.2.conv.2": "features.2",
        "features.18.0": "features.18", "classifier.1": "classifier.1",
    }
    assert entries["features.0.0"][1] == ENDS[0] and entries["classifier.1"][1] == ENDS[1]
    assert [name for name, (_, note) in entries.items() if note is None] == [
        "features.1.conv.0.0", "features.1.conv.1", "features.2.conv.0.0", "features.2.conv.1.0", "features.2.conv.2",
        "features.18.0",
    ]


def test_resnet_vit_and_convnext_blocks(tmp_path):
    resnet = entries_of(tmp_path, shapes(
        conv1=(8, 3, 7, 7), layer1__0__conv1=(8, 8, 3, 3), layer1__0__conv2=(8, 8, 3, 3),
        layer2__0__conv1=(16, 8, 3, 3), layer2__0__downsample__0=(16, 8, 1, 1), fc=(10, 16),
    ))
    assert resnet["layer2.0.downsample.0"] == ("layer2.0", None)
    assert resnet["conv1"][1] == resnet["fc"][1] == "outside numbered blocks, not pruned"
    vit = entries_of(tmp_path, shapes(
        patch_embed__proj=(24, 3, 4, 4), blocks__0__attn__qkv=(72, 24), blocks__0__mlp__fc1=(96, 24),
        blocks__1__attn__qkv=(72, 24), blocks__1__mlp__fc1=(96, 24), head=(10, 24),
    ))
    assert [name for name, (_, note) in vit.items() if note is None] == [
        "blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv", "blocks.1.mlp.fc1",
    ]
    convnext = entries_of(tmp_path, shapes(
        stem__0=(16, 3, 4, 4),
        stages__0__blocks__0__conv_dw=(16, 1, 7, 7), stages__0__blocks__0__mlp__fc1=(64, 16),
        stages__0__blocks__1__conv_dw=(16, 1, 7, 7), stages__0__blocks__1__mlp__fc1=(64, 16),
        stages__1__downsample__1=(32, 16, 2, 2), stages__1__blocks__0__mlp__fc1=(128, 32),
        head__fc=(10, 32),
    ))
    assert {name: block for name, (block, _) in convnext.items()} == {
        "stem.0": "stem.0", "stages.0.blocks.0.conv_dw": "stages.0.blocks.0", "stages.0.blocks.0.mlp.fc1": "stages.0.blocks.0",
        "stages.0.blocks.1.conv_dw": "stages.0.blocks.1", "stages.0.blocks.1.mlp.fc1": "stages.0.blocks.1",
        "stages.1.downsample.1": "stages.1", "stages.1.blocks.0.mlp.fc1": "stages.1.blocks.0", "head.fc": None,
    }
    assert convnext["stem.0"][1] == ENDS[0] and convnext["head.fc"][1] == "outside numbered blocks, not pruned"


def test_decoder_lms_prune_every_decoder_linear_as_before(tmp_path):
    """The ends of an LM are its embeddings and output head: the decoder linears are all in scope,
    with tied embeddings too (the last weight matrix is then a down_proj, part of its decoder layer)."""
    checkpoint = open_checkpoint(str(FIXTURES / "tiny-llama"))
    try:
        infos = checkpoint.tensors()
    finally:
        checkpoint.close()
    for tied in (False, True):
        kept = [info for info in infos if not (tied and info.key == "lm_head.weight")]
        entries = scope_entries(kept)
        assert [item["name"] for item in prunable(entries)] == [
            f"model.layers.{layer}.{part}" for layer in range(4) for part in (
                "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
            )
        ]
        notes = {item["name"]: item["note"] for item in entries if item["note"] is not None}
        assert notes["model.embed_tokens"] == "embedding, not pruned"
        assert tied or notes["lm_head"] == "outside numbered blocks, not pruned"


def test_alphapruning_on_a_flat_sequential_cnn_leaves_the_stem_and_head_dense(tmp_path):
    """The measured defect: at target 0.5 the stem conv got 0.58 and the classifier 0.73."""
    torch.manual_seed(0)
    source = tmp_path / "cnn.pth"
    torch.save(flat_sequential_cnn().state_dict(), source)
    settings = PruneSettings(target=0.5, granularity="matrix")
    record = prune_checkpoint(str(source), tmp_path / "out", settings)
    ratios = {layer["name"]: layer["achieved_ratio"] for layer in record["layers"]}
    assert ratios["features.0"] is None and ratios["classifier.3"] is None
    pruned = torch.load(tmp_path / "out" / "cnn.pth", weights_only=True)
    original = torch.load(source, weights_only=True)
    assert torch.equal(pruned["features.0.weight"], original["features.0.weight"])
    assert torch.equal(pruned["classifier.3.weight"], original["classifier.3.weight"])
    assert abs(record["summary"]["achieved"] - 0.5) < 1e-3
    assert record["settings"]["include_ends"] is False
    included = prune_checkpoint(
        str(source), tmp_path / "all", PruneSettings(target=0.5, granularity="matrix", include_ends=True)
    )
    assert all(layer["achieved_ratio"] > 0 for layer in included["layers"] if layer["kind"] != "embedding")
