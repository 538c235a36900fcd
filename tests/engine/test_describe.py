"""`describe`: the layers analyze would solve and skip, from headers, without reading tensor data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fixtures.quantized import write_gguf
from htsr_cli.checkpoints.base import Checkpoint
from htsr_cli.checkpoints.quantized.gguf_file import GgufCheckpoint
from htsr_cli.checkpoints.safetensors_file import SafetensorsFile
from htsr_cli.engine.describe import describe
from htsr_cli.engine.pipeline import analyze
from htsr_cli.settings import AnalyzeSettings
from tests.conftest import FIXTURES
from tests.results.test_schemas import validate

TINY_CNN = FIXTURES / "tiny-cnn-trained.pth"
TINY_LLAMA = FIXTURES / "tiny-llama"


def planned_as_reported(description, report) -> None:
    """Every planned layer is the report's layer of that name, skipped exactly when the report skips it."""
    reported = {layer.name: layer for layer in report.layers}
    assert [layer.name for layer in description.layers] == [layer.name for layer in report.layers]
    for planned in description.layers:
        layer = reported[planned.name]
        assert (planned.tensor, planned.kind, list(planned.shape), planned.block, planned.params, planned.storage) == (
            layer.tensor, layer.kind, layer.shape, layer.block, layer.params, layer.storage
        )
        if planned.status == "skip":
            assert (layer.status, layer.reason) == ("skipped", planned.skip_reason)
        else:
            assert layer.status != "skipped" and layer.num_evals == planned.num_evals


@pytest.fixture
def no_tensor_reads(monkeypatch):
    """Fail on any tensor load: describe must never read tensor data."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"describe loaded a tensor from {type(self).__name__}")

    for reader in (SafetensorsFile, GgufCheckpoint):
        monkeypatch.setattr(reader, "load", refuse)
    monkeypatch.setattr(Checkpoint, "load_for", refuse)


@pytest.mark.parametrize(("source", "settings"), [
    (TINY_CNN, AnalyzeSettings()),
    (TINY_CNN, AnalyzeSettings(min_evals=100, layers="conv|fc1")),
    (TINY_LLAMA, AnalyzeSettings(min_evals=40, layers=r"layers\.1\.|embed")),
])
def test_describe_lists_what_analyze_solves_and_skips(source, settings):
    planned_as_reported(describe(source, settings), analyze(source, settings))


def test_describe_of_a_sharded_directory_reads_headers_only(no_tensor_reads):
    description = describe(TINY_LLAMA)
    assert description.reads == "the header of each of the 4 safetensors files; no tensor data"
    assert description.summary == {
        "layers": 30, "to_analyze": 30, "skipped": 0, "params": 246784, "params_to_analyze": 246784, "num_evals": 1664,
    }
    assert description.layers[0].name == "model.embed_tokens"  # module order, from config.json
    validate(description.to_json())


@pytest.mark.minilm
def test_describe_of_minilm_reads_no_tensor_bytes(minilm_dir, no_tensor_reads):
    description = describe(minilm_dir)
    assert (description.summary["layers"], description.summary["skipped"]) == (40, 1)
    [skipped] = [layer for layer in description.layers if layer.status == "skip"]
    assert (skipped.name, skipped.skip_reason) == ("embeddings.token_type_embeddings", "2 eigenvalues < min_evals 10")
    assert description.reads == "the header of the safetensors file; no tensor data"


@pytest.mark.minilm
@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts bytes read through /proc/self/io (Linux)")
def test_describe_reads_a_small_fraction_of_the_file(minilm_dir):
    """Counted by the kernel: the bytes this process read while describing, against the weights' size."""

    def bytes_read() -> int:
        fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
        return int(fields["rchar"])

    describe(minilm_dir)  # imports and the architecture lookup happen once
    before = bytes_read()
    description = describe(minilm_dir)
    read = bytes_read() - before
    smallest = min(layer.params * 4 for layer in description.layers if layer.status == "analyze")  # float32
    assert read < smallest, (read, smallest)  # less than any one of the matrices it lists


@pytest.mark.minilm
def test_describe_of_minilm_matches_its_analysis(minilm_dir):
    settings = AnalyzeSettings(layers=r"encoder\.layer\.0\.|token_type|pooler", xmin="median")
    planned_as_reported(describe(minilm_dir, settings), analyze(minilm_dir, settings))


@pytest.mark.minilm
def test_describe_of_a_gguf_file_reads_no_tensor(minilm_dir, tmp_path, monkeypatch):
    path = write_gguf(minilm_dir, tmp_path / "minilm.gguf", "Q8_0", file_type="MOSTLY_Q8_0")
    report = analyze(path, layers=r"blk\.0\.")
    monkeypatch.setattr(GgufCheckpoint, "load", lambda self, key: pytest.fail(f"loaded {key}"))
    description = describe(path, AnalyzeSettings(layers=r"blk\.0\."))
    planned_as_reported(description, report)
    assert {layer.storage for layer in description.layers} == {"gguf Q8_0"}
    assert description.checkpoint_format["architecture"] == "bert"
    assert description.reads == "the GGUF header and metadata; tensor data is memory-mapped, not read"


def test_torch_files_say_what_listing_them_read(tmp_path, state_dict):
    assert describe(TINY_CNN).reads.startswith("tiny-cnn-trained.pth: its pickle (")
    legacy = tmp_path / "legacy.pt"
    torch.save(state_dict, legacy, _use_new_zipfile_serialization=False)
    reads = describe(legacy).reads
    assert reads == f"legacy.pt: the whole file ({legacy.stat().st_size:,} bytes; the legacy torch format cannot be memory-mapped)"


def test_the_memory_budget_skips_as_analyze_does():
    settings = AnalyzeSettings(max_memory="1MiB")
    description = describe(TINY_CNN, settings)
    skipped = [layer.name for layer in description.layers if layer.status == "skip"]
    assert skipped == ["fc1", "fc2"]  # the solves that need more than 1 MiB
    assert all(layer.solve_bytes > 2**20 for layer in description.layers if layer.name in skipped)
    assert description.settings["memory_budget"] == 2**20
    planned_as_reported(description, analyze(TINY_CNN, settings))


def test_unreadable_and_unsupported_weights_are_listed_with_their_reason(tmp_path):
    path = tmp_path / "mixed.safetensors"
    save_file({
        "a.weight": torch.randn(32, 16),
        "ids.weight": torch.zeros(8, 8, dtype=torch.int8),
        "cube.weight": torch.zeros(2, 2, 2, 2, 2),
        "a.bias": torch.zeros(32),
    }, path)
    description = describe(path)
    assert [(layer.name, layer.status, layer.skip_reason) for layer in description.layers] == [
        ("a", "analyze", None), ("cube", "skip", "unsupported 5-D tensor"), ("ids", "skip", "quantized"),
    ]
    assert description.tensors == 4
