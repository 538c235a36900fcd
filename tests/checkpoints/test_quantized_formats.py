"""Quantized checkpoints end to end: all-MiniLM-L6-v2 (and the tiny LLaMA) in every format.

Fixtures are written at test time by fixtures/quantized.py into a session
temp dir. Alphas are compared with `--xmin median` (TempBalance's rule), a
continuous function of the spectrum: the `ks` and `peak` rules pick xmin by a
minimum over candidates, and a perturbation of 1e-3 can move that minimum to
another candidate on a few layers (MiniLM's encoder.layer.4.attention.self.value
goes 8.44 -> 2.43 under LLM.int8), which says nothing about the reader.
Measured median-alpha bounds, max over MiniLM's 39 analysed layers: 8-bit
formats <= 0.003, 4-bit formats <= 0.050 (GGUF Q4_0 0.0497, GPTQ 0.034,
compressed-tensors 0.034, AWQ 0.025, MXFP4 0.023, NF4 0.013), 3-bit 0.080.
"""

from __future__ import annotations

import json
import math
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tests.conftest import FIXTURES
from fixtures.quantized import mxfp4_parts, write_compressed, write_gguf, write_quantized
from htsr_cli.engine.pipeline import analyze
from htsr_cli.checkpoints import open_checkpoint
from htsr_cli.checkpoints.quantized.packing import CHUNK_ELEMENTS
from htsr_cli.results.compare import compare_reports

pytestmark = pytest.mark.minilm

EIGHT_BIT_BOUND = 0.05  # the bar for Q8-class formats
FOUR_BIT_BOUND = 0.06  # measured max 0.0497 (GGUF Q4_0)

FORMATS = {
    # name: (writer, storage label of the quantized layers, median-alpha bound)
    "gptq-int8": (lambda src, dst: write_quantized(src, dst, "gptq", bits=8), "gptq int8 g128", EIGHT_BIT_BOUND),
    "bnb-int8": (lambda src, dst: write_quantized(src, dst, "bnb-int8"), "bnb int8", EIGHT_BIT_BOUND),
    "fp8-block": (lambda src, dst: write_quantized(src, dst, "fp8-block"), "fp8-e4m3 block 128x128", EIGHT_BIT_BOUND),
    "ct-int8-asym": (lambda src, dst: write_compressed(src, dst, 8, "channel", symmetric=False),
                     "compressed-tensors pack-quantized int8 per-channel asym", EIGHT_BIT_BOUND),
    "ct-naive-int8": (lambda src, dst: write_compressed(src, dst, 8, "channel", symmetric=True, fmt="int-quantized"),
                      "compressed-tensors int-quantized int8 per-channel", EIGHT_BIT_BOUND),
    "gguf-Q8_0": (lambda src, dst: write_gguf(src, dst.with_suffix(".gguf"), "Q8_0", file_type="MOSTLY_Q8_0"), "gguf Q8_0", EIGHT_BIT_BOUND),
    "gptq-int4-act-order": (lambda src, dst: write_quantized(src, dst, "gptq", bits=4, act_order=True),
                            "gptq int4 g128 act-order", FOUR_BIT_BOUND),
    "awq-int4": (lambda src, dst: write_quantized(src, dst, "awq"), "awq int4 g128", FOUR_BIT_BOUND),
    "bnb-nf4-double": (lambda src, dst: write_quantized(src, dst, "bnb-nf4", nested=True), "bnb nf4 double-quant", FOUR_BIT_BOUND),
    "mxfp4": (lambda src, dst: write_quantized(src, dst, "mxfp4"), "mxfp4", FOUR_BIT_BOUND),
    "ct-int4-g128": (lambda src, dst: write_compressed(src, dst, 4, "group", symmetric=True, group_size=128),
                     "compressed-tensors pack-quantized int4 group 128", FOUR_BIT_BOUND),
    "gguf-Q4_0": (lambda src, dst: write_gguf(src, dst.with_suffix(".gguf"), "Q4_0", file_type="MOSTLY_Q4_0"), "gguf Q4_0", FOUR_BIT_BOUND),
}


@pytest.fixture(scope="session")
def quantized(minilm_dir, tmp_path_factory):
    """name -> path of MiniLM in that format, written on first use."""
    folder = tmp_path_factory.mktemp("quantized")
    paths = {}

    def get(name: str):
        if name not in paths:
            paths[name] = FORMATS[name][0](minilm_dir, folder / name)
        return paths[name]

    return get


@pytest.fixture(scope="session")
def minilm_median(minilm_dir):
    return analyze(minilm_dir, xmin="median")


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_reads_as_the_float_model(name, quantized, minilm_median):
    _, storage, bound = FORMATS[name]
    report = analyze(quantized(name), xmin="median")
    comparison = compare_reports(minilm_median, report)
    if name.startswith("gguf"):
        # llama.cpp drops BERT's pooler; every other layer is there under its GGUF name.
        assert [d.name for d in comparison.layers if d.status == "only in A"] == ["pooler.dense"]
        assert report.checkpoint_format["architecture"] == "bert"
        assert all(layer.storage == storage for layer in report.layers)
    else:
        assert [layer.name for layer in report.layers] == [layer.name for layer in minilm_median.layers]
        assert [layer.status for layer in report.layers] == [layer.status for layer in minilm_median.layers]
        encoder = [layer for layer in report.layers if layer.name.startswith("encoder.layer.")]
        assert len(encoder) == 36 and all(layer.storage == storage for layer in encoder)
        assert all(layer.storage == "float32" for layer in report.layers if layer not in encoder)
        assert report.checkpoint_format["packed_weights"] == 36
    deltas = [abs(delta.delta) for delta in comparison.compared]
    assert len(deltas) == (38 if name.startswith("gguf") else 39)
    assert max(deltas) <= bound


@pytest.mark.parametrize("name", ["ct-int8-asym", "ct-naive-int8", "ct-int4-g128"])
def test_compressed_tensors_equal_the_packages_own_decompression(name, quantized):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    path = quantized(name)
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**config["config_groups"]["group_0"]["weights"]))
    compressor = BaseCompressor.load_from_registry(config["format"])
    stored = load_file(path / "model.safetensors")
    with open_checkpoint(path) as checkpoint:
        for prefix in ("encoder.layer.0.attention.self.query.", "encoder.layer.5.output.dense."):
            module = {key[len(prefix):]: value for key, value in stored.items() if key.startswith(prefix) and "bias" not in key}
            reference = compressor.decompress(module, scheme)["weight"]
            assert torch.equal(checkpoint.load(prefix + "weight"), reference.to(torch.float32))


def test_gguf_equals_the_packages_own_dequantization(quantized):
    import gguf
    import numpy as np

    path = quantized("gguf-Q4_0")
    reader = gguf.GGUFReader(path)
    with open_checkpoint(path) as checkpoint:
        for tensor in reader.tensors[:12]:
            expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            assert torch.equal(checkpoint.load(tensor.name), torch.from_numpy(np.array(expected, dtype=np.float32)))


def test_every_gguf_type_the_package_decodes(tmp_path):
    """One tensor per GGML type, filled with random bytes (kept finite), read as gguf itself reads it."""
    import gguf
    import numpy as np

    from htsr_cli.checkpoints.quantized.gguf_file import gguf_version

    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(tmp_path / "types.gguf", "llama")
    names = {}
    for qtype in gguf.GGMLQuantizationType:
        if qtype.name in ("I8", "I16", "I32", "I64", "F64"):
            continue
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = 16, math.lcm(256, block)
        # Bytes below 0x3C keep every fp16 / bf16 / e8m0 field a small finite number.
        data = rng.integers(0, 0x3C, size=(rows, cols // block * type_size), dtype=np.uint8)
        name = f"blk.0.t_{qtype.name.lower()}.weight"
        names[name] = qtype
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            # Plain floats: the writer takes the numpy dtype.
            writer.add_tensor(name, rng.standard_normal((rows, cols)).astype(np.float32 if qtype.name == "F32" else np.float16))
        else:
            writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = {tensor.name: tensor for tensor in gguf.GGUFReader(tmp_path / "types.gguf").tensors}
    with open_checkpoint(tmp_path / "types.gguf") as checkpoint:
        infos = {info.key: info for info in checkpoint.tensors()}
        decoded = 0
        for name, qtype in names.items():
            info = infos[name]
            assert info.storage == f"gguf {qtype.name}"
            try:
                expected = gguf.quants.dequantize(reader[name].data, qtype)
            except NotImplementedError:
                assert info.unreadable == f"gguf {qtype.name}: not supported by gguf {gguf_version()}"
                continue
            assert info.unreadable is None
            assert torch.equal(checkpoint.load(name), torch.from_numpy(np.array(expected, dtype=np.float32)))
            decoded += 1
    assert decoded >= 25  # F16, BF16, Q4_0 .. Q8_0, K-quants, IQ types, TQ, MXFP4, ...


def test_unsupported_gguf_type_is_a_skipped_layer_with_the_reason(tmp_path, cli):
    import gguf
    import numpy as np

    from htsr_cli.checkpoints.quantized.gguf_file import gguf_version

    writer = gguf.GGUFWriter(tmp_path / "q8_1.gguf", "llama")
    q8_1 = gguf.GGMLQuantizationType.Q8_1
    block, type_size = gguf.GGML_QUANT_SIZES[q8_1]
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((64, 64 // block * type_size), dtype=np.uint8), raw_dtype=q8_1)
    writer.add_tensor("blk.0.ffn_down.weight", np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = cli("analyze", tmp_path / "q8_1.gguf", "--format", "json")
    assert result.exit_code == 0, result.output
    layers = {layer["name"]: layer for layer in json.loads(result.stdout)["layers"]}
    assert layers["blk.0.ffn_up"]["status"] == "skipped"
    assert layers["blk.0.ffn_up"]["reason"] == f"gguf Q8_1: not supported by gguf {gguf_version()}"
    assert layers["blk.0.ffn_up"]["storage"] == "gguf Q8_1"
    assert layers["blk.0.ffn_down"]["status"] == "ok" and layers["blk.0.ffn_down"]["block"] == "blk.0"


def test_damaged_gguf_files_exit_2(tmp_path, cli, quantized):
    from htsr_cli.checkpoints.quantized.gguf_file import gguf_version

    whole = quantized("gguf-Q8_0").read_bytes()
    (tmp_path / "truncated.gguf").write_bytes(whole[: len(whole) - 5000])
    result = cli("analyze", tmp_path / "truncated.gguf", "-o", tmp_path / "out.json")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"htsr: error: {tmp_path / 'truncated.gguf'}: is truncated or not a valid GGUF file (")
    assert "Traceback" not in result.output and not (tmp_path / "out.json").exists()
    # An unknown GGML type id in a tensor's header: the reader cannot size the data.
    import gguf

    reader = gguf.GGUFReader(quantized("gguf-Q8_0"))
    type_offset = reader.tensors[0].field.parts[4]
    position = int(type_offset.ctypes.data - reader.data.ctypes.data)
    damaged = bytearray(whole)
    damaged[position : position + 4] = (99).to_bytes(4, "little")
    (tmp_path / "unknown-type.gguf").write_bytes(bytes(damaged))
    result = cli("analyze", tmp_path / "unknown-type.gguf")
    assert result.exit_code == 2
    assert result.stderr == (
        f"htsr: error: {tmp_path / 'unknown-type.gguf'}: a tensor has GGML type 99, which gguf {gguf_version()} "
        "does not know (a damaged file, or one newer than the installed gguf package)\n"
    )


def analysed_layers(cli, path, pattern: str) -> dict[str, dict]:
    """`htsr analyze PATH --layers PATTERN --format json`, which must succeed: name -> layer entry."""
    result = cli("analyze", path, "--format", "json", "--layers", pattern)
    assert result.exit_code == 0, result.output
    return {layer["name"]: layer for layer in json.loads(result.stdout)["layers"]}


def test_gptq_without_scales_is_a_skipped_layer(tmp_path, cli, minilm_dir):
    path = write_quantized(minilm_dir, tmp_path / "gptq", "gptq", bits=4)
    state = load_file(path / "model.safetensors")
    del state["encoder.layer.2.attention.self.key.scales"]
    save_file(state, path / "model.safetensors")
    layers = analysed_layers(cli, path, r"encoder\.layer\.2\.attention\.self")
    assert layers["encoder.layer.2.attention.self.key"]["status"] == "skipped"
    assert layers["encoder.layer.2.attention.self.key"]["reason"] == "gptq qweight without scales"
    assert layers["encoder.layer.2.attention.self.query"]["status"] == "ok"
    assert not any(name.endswith(("qzeros", "g_idx", "scales")) for name in layers)


def test_bnb_unknown_quant_type_and_oversized_metadata(tmp_path, cli, minilm_dir):
    path = write_quantized(minilm_dir, tmp_path / "nf4", "bnb-nf4")
    state = load_file(path / "model.safetensors")
    key = "encoder.layer.0.attention.self.query.weight"
    raw = json.loads(bytes(state.pop(key + ".quant_state.bitsandbytes__nf4").tolist()))
    raw["quant_type"] = "nf5"
    state[key + ".quant_state.bitsandbytes__nf5"] = torch.tensor(list(json.dumps(raw).encode()), dtype=torch.uint8)
    save_file(state, path / "model.safetensors")
    layers = analysed_layers(cli, path, r"encoder\.layer\.0\.attention\.self")
    assert layers["encoder.layer.0.attention.self.query"]["reason"] == "bnb 4-bit quant_type 'nf5' is unknown (expected nf4 or fp4)"
    assert layers["encoder.layer.0.attention.self.key"]["storage"] == "bnb nf4"

    state[key + ".quant_state.bitsandbytes__nf5"] = torch.zeros(2 << 20, dtype=torch.uint8)
    save_file(state, path / "model.safetensors")
    result = cli("analyze", path, "-o", tmp_path / "out.json")
    assert result.exit_code == 2
    assert result.stderr == (
        f"htsr: error: {path}: metadata tensor '{key}.quant_state.bitsandbytes__nf5' claims 2097152 bytes "
        "(at most 1048576 expected); the file is damaged\n"
    )
    assert not (tmp_path / "out.json").exists()


def test_fused_mxfp4_experts_are_one_logical_tensor(tmp_path):
    """gpt-oss layout: [E, out, G, 16] blocks for a parameter the model holds as [E, in, out]."""
    experts = torch.randn(4, 64, 96, generator=torch.Generator().manual_seed(0)) * 0.02  # [E, in, out]
    blocks, scales = mxfp4_parts(experts.transpose(1, 2).contiguous())  # stored [E, out, in/32, 16]
    save_file(
        {"model.layers.0.mlp.experts.gate_up_proj_blocks": blocks, "model.layers.0.mlp.experts.gate_up_proj_scales": scales,
         "model.layers.0.mlp.experts.gate_up_proj_bias": torch.zeros(4, 96)},
        tmp_path / "model.safetensors",
    )
    with open_checkpoint(tmp_path / "model.safetensors") as checkpoint:
        infos = {info.key: info for info in checkpoint.tensors()}
        assert set(infos) == {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.gate_up_proj_bias"}
        info = infos["model.layers.0.mlp.experts.gate_up_proj"]
        assert (info.shape, info.dtype, info.storage) == ((4, 64, 96), torch.float32, "mxfp4")
        decoded = checkpoint.load(info.key)
    assert decoded.shape == (4, 64, 96)
    step = torch.pow(2.0, scales.float() - 127).repeat_interleave(32, -1).transpose(1, 2)  # [E, in, out]
    assert ((decoded - experts).abs() <= step).all()


def test_compare_weights_across_gguf_undoes_the_rope_permutation(tmp_path, cli):
    write_gguf(FIXTURES / "tiny-llama", tmp_path / "tiny.gguf", "F32", architecture="llama", file_type="ALL_F32")
    # float64: the permuted rows are summed in another order, which a float32 Gram would see (~1e-7).
    result = cli(
        "compare", FIXTURES / "tiny-llama", tmp_path / "tiny.gguf", "--weights", "--format", "json",
        "--precision", "float64",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == "htsr.compare/1" and data["weights"] is True
    by_name = {layer["name"]: layer for layer in data["layers"]}
    assert by_name["model.layers.2.self_attn.k_proj"]["name_b"] == "blk.2.attn_k"
    assert by_name["lm_head"]["name_b"] == "output"
    compared = [layer for layer in data["layers"] if layer["status"] == "compared"]
    assert len(compared) == 30
    # F32 stores the same numbers: after undoing llama.cpp's q/k row order they are identical.
    assert all(layer["relative_error"] == 0.0 for layer in compared)
    assert all(abs(layer["lambda_max_change"]) < 1e-12 for layer in compared)


def test_compare_weights_minilm_q8_formats_agree(tmp_path, cli, quantized, minilm_dir):
    gguf_path = quantized("gguf-Q8_0")
    outputs = {}
    for fmt in ("json", "csv", "markdown"):
        result = cli("compare", minilm_dir, gguf_path, "--weights", "--format", fmt, "--layers", r"(layer|blk)\.[01]\.")
        assert result.exit_code == 0, result.output
        outputs[fmt] = result.stdout
    data = json.loads(outputs["json"])
    compared = [layer for layer in data["layers"] if layer["status"] == "compared"]
    assert len(compared) == 12
    for layer in compared:
        assert 0 < layer["relative_error"] < 0.01  # 8-bit blocks of 32: about 0.4%
        assert abs(layer["lambda_max_change"]) < 0.01
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(outputs["csv"])))
    assert [(row["layer"], float(row["relative_error"])) for row in rows if row["status"] == "compared"] == [
        (layer["name"], layer["relative_error"]) for layer in compared
    ]
    first = compared[0]
    assert f"| {first['name']} | {first['name_b']} |" in outputs["markdown"]
    assert f"{first['relative_error']:.5f}" in outputs["markdown"]
    summary = data["summary"]
    assert summary["max_relative_error"]["relative_error"] == max(layer["relative_error"] for layer in compared)


def test_compare_weights_needs_checkpoints(tmp_path, cli):
    (tmp_path / "a.json").write_text("{}")
    result = cli("compare", tmp_path / "a.json", FIXTURES / "tiny-llama", "--weights")
    assert result.exit_code == 2
    assert result.stderr == (
        f"htsr: error: --weights reads the weights themselves: {tmp_path / 'a.json'} is a saved report; pass both checkpoints\n"
    )


class TensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages torch allocates while the mode is on: alive now, and at most.

    Every op's outputs pass through here; a storage that is not one of the op's inputs and not
    already counted is new. A storage keeps its Python object while any tensor uses it, so a
    finalizer on that object runs when the memory is freed. What the code allocates is counted,
    not the process's RSS, which also moves with the allocator's slack and the machine's load.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._counted: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                address, size = storage.data_ptr(), storage.nbytes()
                if size and address not in inputs and address not in self._counted:
                    self._counted.add(address)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, address, size)
        return out

    def _freed(self, address: int, size: int) -> None:
        self._counted.discard(address)
        self.live -= size


def test_peak_memory_is_one_matrix_plus_its_packed_form(tmp_path):
    """Decode a 8192 x 4096 GPTQ int4 act-order weight (128 MiB as float32, 17 MB packed) and
    count the tensor bytes alive at the peak: the output, the packed input read from the file,
    and the decoder's chunk temporaries, never a second float copy (another 128 MiB).

    The temporaries are about 37 bytes per element of a chunk (int64 codes, float32 values,
    gathered group indices, scales and zero points: 19.5 MB measured); the bound allows 64, and
    a second float copy would add 256 (128 MiB over CHUNK_ELEMENTS). The count is exact, so the
    margin is room for a decoder change, not for noise.
    """
    from fixtures.quantized import gptq_parts

    weight = torch.randn(8192, 4096, generator=torch.Generator().manual_seed(0)) * 0.02
    parts = gptq_parts(weight, 4, 128, act_order=True, symmetric=True, v2=False)
    save_file({f"layer.{role}": value for role, value in parts.items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True}}))
    with open_checkpoint(tmp_path) as checkpoint, TensorBytes() as allocated:
        decoded = checkpoint.load("layer.weight")
        assert tuple(decoded.shape) == (8192, 4096)
    output_bytes, packed_bytes = 8192 * 4096 * 4, sum(value.numel() * value.element_size() for value in parts.values())
    assert allocated.live == output_bytes  # the packed parts and the temporaries are freed
    assert allocated.peak <= output_bytes + packed_bytes + 64 * CHUNK_ELEMENTS, (allocated.peak, output_bytes, packed_bytes)
