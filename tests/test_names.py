"""Module names and blocks from tensor keys (htsr_cli/names.py)."""

from htsr_cli.names import block_of, module_name


def test_names_and_blocks():
    assert module_name("model.layers.7.mlp.up_proj.weight") == "model.layers.7.mlp.up_proj"
    assert module_name("in_proj_weight") == "in_proj_weight"
    assert block_of("model.layers.7.mlp.up_proj") == "model.layers.7"
    assert block_of("layer3.1.conv2") == "layer3.1"
    assert block_of("encoder.layer.0.attention.self.query") == "encoder.layer.0"
    assert block_of("lm_head") is None
