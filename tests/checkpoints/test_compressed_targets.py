"""compressed-tensors config groups that target modules by name, as `htsr quantize` and llm-compressor write them
(in tests/quantize/: a tests/checkpoints package would shadow benchmarks/checkpoints.py, which test_bench_helpers imports)."""

from __future__ import annotations


def test_weight_args_match_a_module_named_by_its_path():
    """compressed-tensors takes a target equal to the module name as that module; htsr reads it so too."""
    from htsr_cli.checkpoints.quantized.compressed_tensors import weight_args

    config = {"config_groups": {
        "a": {"targets": ["model.layers.0.mlp.up_proj"], "weights": {"num_bits": 2}},
        "b": {"targets": ["model.layers.1.mlp.up_proj", "re:.*down_proj$"], "weights": {"num_bits": 4}},
        "c": {"targets": ["Linear"], "weights": {"num_bits": 8}},
    }}
    assert weight_args(config, "model.layers.1.mlp.up_proj") == {"num_bits": 4}
    assert weight_args(config, "model.layers.0.mlp.up_proj") == {"num_bits": 2}
    assert weight_args(config, "model.layers.5.mlp.down_proj") == {"num_bits": 4}
    assert weight_args(config, "model.layers.5.mlp.gate_proj") == {"num_bits": 8}  # by class, not another's path
