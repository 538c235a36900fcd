"""Checkpoint readers against crafted and unusual files (issue 14 items 5, 12, 17, 18, 22, 23).

A file that lies about itself is refused with one line before anything is
allocated; tensors htsr cannot analyse become skipped layers with a reason;
weight-normalised layers are analysed through their effective weight.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import FIXTURES, assert_user_error, run_htsr
from htsr_cli.engine.pipeline import analyze
from htsr_cli.checkpoints import open_checkpoint
from htsr_cli.checkpoints.torchfile import _refused_code
from htsr_cli.errors import HtsrError

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def write_safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def refused(source) -> str:
    with pytest.raises(HtsrError) as caught:
        with open_checkpoint(source) as checkpoint:
            for info in checkpoint.tensors():
                if info.unreadable is None and info.dtype.is_floating_point:
                    checkpoint.load(info.key)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- item 5: sizes a safetensors header claims -------------------------------------------------------------

F32_2x2 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
SAFETENSORS_CASES = {
    "a 100000x100000 matrix in 16 bytes": (
        {"w.weight": {**F32_2x2, "shape": [100000, 100000]}}, 16,
        "tensor 'w.weight' claims 100000x100000 F32 (40.0 GB) but its data holds 16 bytes",
    ),
    "offsets outside the file": (
        {"w.weight": F32_2x2}, 8, "tensor 'w.weight' has its data at [0, 16) but the file holds 8 bytes of data",
    ),
    "overlapping tensors": (
        {"a.weight": F32_2x2, "b.weight": F32_2x2}, 16, "tensors 'a.weight' and 'b.weight' share bytes",
    ),
    "a shape whose product overflows 64 bits": (
        {"w.weight": {**F32_2x2, "shape": [2**40, 2**40]}}, 16, "claims 1099511627776x1099511627776 F32",
    ),
    "a negative size": ({"w.weight": {**F32_2x2, "shape": [-2, 2]}}, 16, "shape [-2, 2], not a list of non-negative integers"),
    "offsets that are not a pair": ({"w.weight": {**F32_2x2, "data_offsets": [0]}}, 16, "data_offsets [0], not a pair"),
    "an entry that is not an object": ({"w.weight": [1, 2]}, 16, "tensor 'w.weight' has a header entry that is not an object"),
    "a header that is a list": ([1, 2], 16, "its header is not a JSON object"),
}


@pytest.mark.parametrize("case", SAFETENSORS_CASES)
def test_safetensors_headers_are_checked_against_the_file(case, tmp_path):
    header, data_bytes, detail = SAFETENSORS_CASES[case]
    path = write_safetensors(tmp_path / "m.safetensors", header, b"\0" * data_bytes)
    message = refused(path)
    assert message == f"{path}: is truncated or not a valid safetensors file ({detail})" or (
        message.startswith(f"{path}: is truncated or not a valid safetensors file (") and detail in message
    ), message


def test_safetensors_header_length_and_nesting(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    assert "its header claims 1,000,000,000,000 bytes of a 10-byte file" in refused(path)
    nested = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(struct.pack("<Q", len(nested)) + nested)
    assert "its header is not JSON: RecursionError" in refused(path)
    path.write_bytes(b"\x01\x02")
    assert refused(path) == f"{path}: is truncated or not a valid safetensors file (2 bytes)"


def test_crafted_header_through_the_cli_allocates_nothing(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", {"w.weight": {**F32_2x2, "shape": [100000, 100000]}}, b"\0" * 16)
    assert_user_error(run_htsr("analyze", path), "claims 100000x100000 F32 (40.0 GB)")


# --- item 5 and 22: torch zip records -----------------------------------------------------------------------


def rewrite_zip(source: Path, target: Path, change) -> Path:
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        for info in archive.infolist():
            out.writestr(info.filename, change(info.filename, archive.read(info.filename)))
    return target


def member_offset(path: Path, suffix: str) -> int:
    with zipfile.ZipFile(path) as archive, path.open("rb") as raw:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
        raw.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", raw.read(4))
        return info.header_offset + 30 + name_length + extra_length


@pytest.fixture
def saved(tmp_path) -> Path:
    torch.manual_seed(0)
    torch.save({"fc.weight": torch.randn(64, 64), "fc.bias": torch.randn(64)}, tmp_path / "ok.pth")
    return tmp_path / "ok.pth"


def test_a_storage_claiming_more_than_its_record_is_refused(saved, tmp_path):
    """Memory-mapped, such a storage would silently read the next records' bytes."""
    claim_more = rewrite_zip(
        saved, tmp_path / "claims.pth",
        lambda name, data: data.replace(b"M\x00\x10", b"J" + (2**31 - 1).to_bytes(4, "little")) if name.endswith("data.pkl") else data,
    )
    message = refused(claim_more)
    assert message.startswith(f"{claim_more}: tensor 'fc.weight' claims 8,589,934,588 bytes of storage but its record ")
    assert message.endswith("data/0 holds 16,384; the file is damaged")


def test_a_corrupted_record_fails_its_crc_on_first_load(saved, tmp_path):
    corrupted = tmp_path / "bad.pth"
    raw = bytearray(saved.read_bytes())
    raw[member_offset(saved, "data/0") + 100] ^= 0xFF
    corrupted.write_bytes(bytes(raw))
    with open_checkpoint(corrupted) as checkpoint:  # listing reads no tensor data
        assert [info.key for info in checkpoint.tensors()] == ["fc.weight", "fc.bias"]
        checkpoint.load("fc.bias")  # its own record is intact
        with pytest.raises(HtsrError, match=r"record ok/data/0 is corrupted \(CRC-32 [0-9a-f]{8}, expected [0-9a-f]{8}\); the file is damaged"):
            checkpoint.load("fc.weight")
    assert_user_error(run_htsr("analyze", corrupted), "record ok/data/0 is corrupted")


def test_an_intact_file_loads_the_same_tensors(saved):
    with open_checkpoint(saved) as checkpoint:
        torch.manual_seed(0)
        assert torch.equal(checkpoint.load("fc.weight"), torch.randn(64, 64))


# --- item 18: every form of the weights-only refusal ------------------------------------------------------


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_pickles_that_would_run_code_are_named_as_such(protocol, tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": RunsCode()}, protocol=protocol))
    assert refused(path) == (
        f"{path}: refused: the pickle would run code (posix.system); htsr loads weights only: "
        "re-save the weights with torch.save(model.state_dict(), PATH) or as .safetensors"
    )


def test_zip_with_a_hostile_pickle_is_refused(saved, tmp_path):
    evil = rewrite_zip(saved, tmp_path / "evil.pth", lambda name, data: pickle.dumps({"w": RunsCode()}, protocol=2) if name.endswith("data.pkl") else data)
    assert "refused: the pickle would run code (posix.system)" in refused(evil)


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ("Weights only load failed. Trying to load unsupported GLOBAL posix.system whose module posix is blocked.", "posix.system"),
        ("Unsupported global: GLOBAL builtins.exec was not an allowed global by default.", "builtins.exec"),
        ("Trying to call reduce for unrecognized function <built-in function system>", "system"),
        ("Can only create new object for nn.Parameter or classes allowlisted via `add_safe_globals` but got <class 'subprocess.Popen'>", "subprocess.Popen"),
        ("Unsupported operand 147", "pickle opcode STACK_GLOBAL"),
        ("Unsupported operand 0", None),
        ("persistent_load id must be tuple or int, but got str", None),
    ],
)
def test_refusal_wordings(message, named):
    assert _refused_code(message) == named


def test_plain_damage_is_still_damage(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4))
    assert "is truncated or not a valid torch checkpoint" in refused(path)


# --- item 17: shard indexes stay inside the model directory -------------------------------------------------


@pytest.mark.parametrize("escape", ["../outside.safetensors", "/etc/passwd", "link.safetensors", "sub/../../outside.safetensors"])
def test_shard_index_entries_outside_the_directory_are_refused(escape, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    save_file({"a.weight": torch.randn(8, 8)}, tmp_path / "outside.safetensors")
    (model / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    index = {"weight_map": {"a.weight": escape}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    line = assert_user_error(run_htsr("analyze", model))
    assert line == (
        f"htsr: error: {model}: model.safetensors.index.json lists a shard outside the model directory "
        f"({escape!r}); refusing to read it"
    )


def test_hub_cache_snapshots_link_into_their_blobs(tmp_path, monkeypatch):
    """The real cache layout: snapshot files are symlinks into the repository's blobs/; @revision picks one."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--name"
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "v1").write_text(SNAPSHOT)
    torch.manual_seed(0)
    shards = {"model-00001-of-00002.safetensors": {"a.weight": torch.randn(16, 16)},
              "model-00002-of-00002.safetensors": {"b.weight": torch.randn(16, 16)}}
    weight_map = {}
    for name, tensors in shards.items():
        save_file(tensors, repo / "blobs" / name)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / name)
        weight_map.update(dict.fromkeys(tensors, name))
    (repo / "blobs" / "index").write_text(json.dumps({"weight_map": weight_map}))
    (snapshot / "model.safetensors.index.json").symlink_to(Path("..") / ".." / "blobs" / "index")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with open_checkpoint("org/name@v1") as checkpoint:
        assert [info.key for info in checkpoint.tensors()] == ["a.weight", "b.weight"]
    with pytest.raises(HtsrError, match="not in the local Hugging Face cache"):
        open_checkpoint("org/name@v2")


def test_broken_shard_indexes(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    index = model / "model.safetensors.index.json"
    for text, detail in (
        ("[" * 100_000, "RecursionError"),
        ('{"weight_map": {"a": 3}}', "shard names must be non-empty strings"),
        ('{"weight_map": []}', "AttributeError"),
    ):
        index.write_text(text)
        assert_user_error(run_htsr("analyze", model), "model.safetensors.index.json is not a valid shard index", detail)


# --- items 12 and 23: tensors htsr cannot analyse, and ones it can through a parametrisation ---------------


def layer(report, name):
    found = report.layer(name)
    assert found is not None, [l.name for l in report.layers]
    return found


def test_sparse_tensors_are_skipped_with_a_reason(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        state = {
            "coo.weight": torch.randn(32, 32).to_sparse(),
            "csr.weight": torch.randn(32, 32).to_sparse_csr(),
            "dense.weight": torch.randn(32, 32),
        }
    torch.save(state, tmp_path / "sparse.pth")
    for source in (state, tmp_path / "sparse.pth"):
        report = analyze(source, device="cpu")
        assert (layer(report, "coo").status, layer(report, "coo").reason) == ("skipped", "sparse tensor (sparse_coo), not supported")
        assert layer(report, "csr").reason == "sparse tensor (sparse_csr), not supported"
        assert layer(report, "dense").status == "ok"


def test_meta_weights_are_a_clear_error():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 16))
    with pytest.raises(HtsrError, match=r"the weights are not materialised \('0\.weight' is on the meta device\)"):
        analyze(model, device="cpu")


def test_dynamically_quantized_modules_are_skipped_layers(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    torch.save(quantized.state_dict(), tmp_path / "dq.pth")
    for source in (quantized, tmp_path / "dq.pth"):
        report = analyze(source, device="cpu")
        assert [(l.name, l.tensor, l.shape, l.status, l.reason, l.storage) for l in report.layers] == [
            ("0", "0.weight", [32, 64], "skipped", "quantized", "qint8"),
            ("2", "2.weight", [10, 32], "skipped", "quantized", "qint8"),
        ]


def test_complex_weights_are_not_called_quantized():
    report = analyze({"c.weight": torch.randn(32, 32, dtype=torch.complex64)}, device="cpu")
    assert (layer(report, "c").status, layer(report, "c").reason) == ("skipped", "complex dtype, not supported")


def weight_normed() -> torch.nn.Module:
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.nn.Sequential(
            parametrizations.weight_norm(torch.nn.Linear(48, 64)),
            torch.nn.utils.weight_norm(torch.nn.Conv1d(64, 32, 3)),
            parametrizations.weight_norm(torch.nn.Linear(32, 40), dim=None),
        )
    with torch.no_grad():  # magnitudes that differ from ||v||, so the composition matters
        for parameter in model.parameters():
            parameter.mul_(torch.rand_like(parameter) + 0.5)
    return model


def test_weight_norm_layers_are_analysed_through_their_effective_weight(tmp_path):
    model = weight_normed()
    effective = {}
    for index, module in enumerate(model):
        g_and_v = dict(module.named_parameters())
        g = g_and_v.get("parametrizations.weight.original0", g_and_v.get("weight_g"))
        v = g_and_v.get("parametrizations.weight.original1", g_and_v.get("weight_v"))
        dim = 0 if g.dim() and g.shape[0] == v.shape[0] and g.numel() > 1 else -1
        # W = g v / ||v||, the norm per output row (dim 0) or over the whole tensor (dim=None)
        norm = v.norm(dim=tuple(range(1, v.dim())), keepdim=True) if dim == 0 else v.norm()
        effective[f"{index}.weight"] = (g * v / norm).detach()
    torch.save(model.state_dict(), tmp_path / "wn.pth")
    plain = analyze(effective, device="cpu")
    for source in (model, tmp_path / "wn.pth"):
        report = analyze(source, device="cpu")
        assert [(l.name, l.tensor, l.kind, l.storage) for l in report.layers] == [
            ("0", "0.weight", "linear", "weight_norm float32"),
            ("1", "1.weight", "conv1d", "weight_norm float32"),
            ("2", "2.weight", "linear", "weight_norm float32"),
        ]
        for ours, reference in zip(report.layers, plain.layers):  # float32 weights: agree to rounding
            assert ours.lambda_max == pytest.approx(reference.lambda_max, rel=1e-5)
            assert ours.alpha == pytest.approx(reference.alpha, rel=1e-5)
            assert ours.num_evals == reference.num_evals


def test_a_model_of_only_unsupported_layers_is_reported_not_empty():
    report = analyze({"coo.weight": torch.randn(16, 16).to_sparse()}, device="cpu")
    assert [(l.name, l.status) for l in report.layers] == [("coo", "skipped")]


def test_fixture_checkpoints_still_verify(tmp_path):
    """Every shipped torch fixture passes the record size and CRC checks."""
    report = analyze(FIXTURES / "tiny-cnn-trained.pth", device="cpu")
    assert report.summary["analyzed"] == 6
