"""Module names and blocks from tensor keys (htsr_cli/names.py)."""

from htsr_cli.names import block_of, module_name


def test_names_and_blocks():
    assert module_name("model.layers.7.mlp.up_proj.weight") == "model.layers.7.mlp.up_proj"
    assert module_name("in_proj_weight") == "in_proj_weight"
    assert block_of("model.layers.7.mlp.up_proj") == "model.layers.7"
    assert block_of("layer3.1.conv2") == "layer3.1"
    assert block_of("encoder.layer.0.attention.self.query") == "encoder.layer.0"
    assert block_of("lm_head") is None


def test_blocks_follow_the_structure_of_vision_models():
    # a stage's own numbered blocks are the unit ...
    assert block_of("stages.0.blocks.1.conv_dw") == "stages.0.blocks.1"  # timm ConvNeXt
    assert block_of("encoder.layers.0.blocks.1.attention.self.query") == "encoder.layers.0.blocks.1"  # Swin
    assert block_of("features.1.0.block.0.0") == "features.1.0"  # torchvision EfficientNet, ConvNeXt
    assert block_of("blocks.2.1.conv_pw") == "blocks.2.1"  # timm EfficientNet
    # ... but a conv that is itself a stage's child stays in the stage
    assert block_of("features.0.0") == "features.0"  # MobileNetV2's stem ConvBNReLU
    assert block_of("features.1.conv.0.0") == "features.1"  # MobileNetV2's InvertedResidual
    assert block_of("stages.1.downsample.1") == "stages.1"
    assert block_of("encoder.block.0.layer.1.DenseReluDense.wi") == "encoder.block.0"  # T5 keeps its blocks
    assert block_of("model.layers.0.mlp.experts.3.w1") == "model.layers.0"
