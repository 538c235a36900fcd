"""Issue 26 classes 2 and 3b: no hang and no memory blow-up from what a file says.

Generated per class: side files that are not regular files (a FIFO, /dev/zero,
a directory, links to them) in every role a command reads one in; documents
larger or deeper than the stated limits; configs whose counts contradict the
weights; torch zips whose pickle inflates, whose tensors are expanded views or
built by the pickle; safetensors headers of too many tensors; quantized parts
whose shapes cannot be; shard indexes with NUL bytes and directories with link
loops. Every case runs under a memory limit and is exit 2 with one line, in seconds.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st
from safetensors.torch import save_file

from tests.conftest import FIXTURES, small_state_dict, tiny_text, write_tiny_language_model
from fixtures.quantized import gptq_parts
from tests.hostile.harness import assert_refused, batches, run_cases, snapshot


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A weight file, a tiny language model with its tokenizer, a calibration text, a report and a plan."""
    root = tmp_path_factory.mktemp("bounded")
    save_file({key: value.contiguous() for key, value in small_state_dict().items()}, str(root / "m.safetensors"))
    write_tiny_language_model(root / "lm", "llama")
    write_tiny_language_model(root / "gpt2", "gpt2")
    (root / "text.txt").write_text(tiny_text(3000))
    shutil.copy(FIXTURES / "tiny-cnn-trained.pth", root / "cnn.pth")
    outcomes = run_cases([
        {"args": ["analyze", root / "cnn.pth", "-f", "json", "-o", root / "run.json", "-q"]},
        {"args": ["allocate", "sparsity", root / "run.json", "--target", "0.5", "--granularity", "matrix", "-f", "json", "-o", root / "plan.json", "-q"]},
    ])
    assert [o.code for o in outcomes] == [0, 0], outcomes
    return root


# --- side files that are not regular files ---------------------------------------------------------------------

def make_special(path: Path, kind: str) -> None:
    """`path` as a FIFO, /dev/zero, a directory, or a link to a FIFO or to /dev/zero."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "link-to-fifo":
        os.mkfifo(path.with_name(path.name + ".fifo"))
        path.symlink_to(path.name + ".fifo")


def side_file_case(root: Path, place: Path, role: str) -> tuple[Path, list]:
    """(where the special file goes, the command reading it) for one role."""
    if role in ("config.json", "quantize_config.json", "quant_config.json"):
        shutil.copy(root / "m.safetensors", place / "m.safetensors")
        return place / role, ["analyze", place / "m.safetensors", "-q"]
    if role == "prune copies":
        shutil.copytree(root / "lm", place / "lm")
        return place / "lm" / "notes.txt", ["prune", place / "lm", "--target", "0.5", "--allocation", "uniform", "-o", place / "out", "-q"]
    if role == "tokenizer.json":
        model = shutil.copytree(root / "lm", place / "lm")
        (model / "tokenizer.json").unlink()
        return model / "tokenizer.json", ["eval", "perplexity", model, "--text", root / "text.txt", "-q"]
    if role == "--calibration":
        return place / "c.txt", ["prune", root / "lm", "--target", "0.5", "--method", "wanda", "--calibration", place / "c.txt",
                                 "--samples", "2", "--seq-len", "8", "-o", place / "out", "-q"]
    if role == "--text":
        return place / "t.txt", ["eval", "perplexity", root / "lm", "--text", place / "t.txt", "-q"]
    if role == "--allocation":
        return place / "plan.json", ["prune", root / "cnn.pth", "--allocation", place / "plan.json", "-o", place / "out", "-q"]
    if role == "--config":
        return place / "gate.toml", ["gate", root / "run.json", "--config", place / "gate.toml", "-q"]
    if role == "--baseline":
        return place / "base.json", ["gate", root / "run.json", "--baseline", place / "base.json", "--max-alpha-drift", "1", "-q"]
    if role == "report":
        return place / "r.json", ["compare", root / "run.json", place / "r.json", "-q"]
    raise AssertionError(role)


ROLES = ["config.json", "quantize_config.json", "quant_config.json", "prune copies", "tokenizer.json", "--calibration", "--text",
         "--allocation", "--config", "--baseline", "report"]
KINDS = ["fifo", "dev-zero", "directory", "link-to-fifo"]


@batches(3)
@given(st.lists(st.tuples(st.sampled_from(ROLES), st.sampled_from(KINDS)), min_size=8, max_size=8))
def test_side_files_that_are_not_regular_files_are_refused_at_once(root, tmp_path_factory, batch):
    cases = []
    for role, kind in batch:
        place = tmp_path_factory.mktemp("case")
        special, args = side_file_case(root, place, role)
        if role == "prune copies" and kind == "directory":
            kind = "dev-zero"  # a directory there is a real subdirectory, copied as such
        make_special(special, kind)
        cases.append({"args": args})
    before = snapshot(root)
    for (role, kind), outcome in zip(batch, run_cases(cases, timeout=900)):
        assert_refused(outcome, seconds=60)
        assert "Traceback" not in outcome.stdout
    assert snapshot(root) == before


# --- documents beyond the stated limits ------------------------------------------------------------------------

def nested_json(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@batches(2)
@given(st.lists(st.tuples(st.sampled_from(["config.json", "quantize_config.json", "plan", "report", "toml", "index"]),
                          st.sampled_from([101, 5_000, 100_000])), min_size=6, max_size=6))
def test_documents_nested_too_deeply_are_refused(root, tmp_path_factory, batch):
    cases = []
    for kind, depth in batch:
        place = tmp_path_factory.mktemp("deep")
        if kind in ("config.json", "quantize_config.json"):
            shutil.copy(root / "m.safetensors", place / "m.safetensors")
            (place / kind).write_text(nested_json(depth))
            cases.append({"args": ["analyze", place / "m.safetensors", "-q"]})
        elif kind == "plan":
            (place / "plan.json").write_text(nested_json(depth))
            cases.append({"args": ["prune", root / "cnn.pth", "--allocation", place / "plan.json", "-o", place / "out", "-q"]})
        elif kind == "report":
            (place / "r.json").write_text(nested_json(depth))
            cases.append({"args": ["gate", place / "r.json", "-q"]})
        elif kind == "toml":
            (place / "g.toml").write_text("[tool.htsr.gate]\nx = " + "[" * depth + "]" * depth + "\n")
            cases.append({"args": ["gate", root / "run.json", "--config", place / "g.toml", "-q"]})
        else:
            model = place / "model"
            model.mkdir()
            (model / "model.safetensors.index.json").write_text(nested_json(depth))
            cases.append({"args": ["analyze", model, "-q"]})
    for outcome in run_cases(cases):
        line = assert_refused(outcome)
        assert "nested too deeply" in line or "RecursionError" in line or "cannot read TOML" in line, line


@batches(2)
@given(st.lists(st.sampled_from(["config.json", "plan", "report", "toml", "text"]), min_size=5, max_size=5))
def test_documents_larger_than_the_limit_are_refused_before_reading(root, tmp_path_factory, batch):
    limits = {"HTSR_MAX_DOCUMENT_BYTES": "4096", "HTSR_MAX_TEXT_BYTES": "4096"}
    cases = []
    for kind in batch:
        place = tmp_path_factory.mktemp("big")
        padding = " " * 5000
        if kind == "config.json":
            shutil.copy(root / "m.safetensors", place / "m.safetensors")
            (place / "config.json").write_text("{}" + padding)
            args = ["analyze", place / "m.safetensors", "-q"]
        elif kind == "plan":
            (place / "plan.json").write_text("{}" + padding)
            args = ["prune", root / "cnn.pth", "--allocation", place / "plan.json", "-o", place / "out", "-q"]
        elif kind == "report":
            (place / "r.json").write_text((root / "run.json").read_text() + padding)
            args = ["gate", place / "r.json", "-q"]
        elif kind == "toml":
            (place / "g.toml").write_text("[tool.htsr.gate]\n" + "#" * 5000 + "\n")
            args = ["gate", root / "run.json", "--config", place / "g.toml", "-q"]
        else:
            (place / "t.txt").write_text(tiny_text(3000))
            args = ["eval", "perplexity", root / "lm", "--text", place / "t.txt", "-q"]
        cases.append({"args": args, "env": limits})
    for kind, outcome in zip(batch, run_cases(cases)):
        variable = "HTSR_MAX_TEXT_BYTES" if kind == "text" else "HTSR_MAX_DOCUMENT_BYTES"
        assert_refused(outcome, "is too large", variable)


# --- configs that contradict the weights ------------------------------------------------------------------------

@batches(2)
@given(st.lists(st.tuples(st.sampled_from(["num_hidden_layers", "num_local_experts", "n_positions"]),
                          st.integers(10**4, 10**7), st.sampled_from(["analyze", "wanda", "perplexity"])),
                min_size=4, max_size=4))
def test_configs_are_checked_against_the_weights_before_anything_is_built(root, tmp_path_factory, batch):
    """Layer and expert counts beyond the tensors there are, and (GPT-2) position tables beyond the weights."""
    cases = []
    for field, value, command in batch:
        place = tmp_path_factory.mktemp("config")
        model = shutil.copytree(root / ("gpt2" if field == "n_positions" else "lm"), place / "lm")
        config = json.loads((model / "config.json").read_text())
        config[field] = value
        (model / "config.json").write_text(json.dumps(config))
        if command == "analyze":
            args = ["analyze", model, "-q"]
        elif command == "wanda":
            args = ["prune", model, "--target", "0.5", "--method", "wanda", "--calibration", root / "text.txt",
                    "--samples", "2", "--seq-len", "8", "-o", place / "out", "-q"]
        else:
            args = ["eval", "perplexity", model, "--text", root / "text.txt", "--seq-len", "8", "--max-tokens", "64", "-q"]
        cases.append({"args": args, "field": field, "command": command})
    for case, outcome in zip(cases, run_cases(cases, timeout=900)):
        if case["field"] == "n_positions" and case["command"] == "analyze":
            assert outcome.code == 0, outcome.stderr  # analysis builds nothing from positions
            continue
        assert_refused(outcome, "config.json", seconds=120)


# --- torch files -------------------------------------------------------------------------------------------------

class BuiltByPickle:
    """Pickles as a call of an allow-listed constructor: `torch.FloatTensor(rows, cols)`."""

    def __init__(self, rows: int, cols: int):
        self.shape = (rows, cols)

    def __reduce__(self):
        return torch.FloatTensor, self.shape


def zip_with_pickle(path: Path, change, compress: bool = False) -> Path:
    """A real torch.save zip whose data.pkl is replaced by `change(data.pkl)`."""
    saved = io.BytesIO()
    torch.save({"w": torch.ones(2, 2)}, saved)
    source = zipfile.ZipFile(io.BytesIO(saved.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("data.pkl"):
                out.writestr(info.filename, change(data), compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
            else:
                out.writestr(info.filename, data)
    return path


@batches(2)
@given(st.lists(st.tuples(st.sampled_from(["expanded", "built by the pickle", "inflating pickle"]),
                          st.integers(4_000, 20_000)), min_size=4, max_size=4))
def test_torch_files_claiming_more_than_they_hold(tmp_path_factory, batch):
    cases = []
    for kind, size in batch:
        path = tmp_path_factory.mktemp("torch") / "m.pth"
        if kind == "expanded":
            torch.save({"w": torch.ones(1).expand(size, size)}, path)
        elif kind == "built by the pickle":
            zip_with_pickle(path, lambda _: pickle.dumps({"w": BuiltByPickle(size, size)}, protocol=2))
        else:
            zip_with_pickle(path, lambda data: data[:-1] + b"N" * (size << 10) + data[-1:], compress=True)
        cases.append({"args": ["analyze", path, "-q"], "env": {"HTSR_MAX_PICKLE_BYTES": str(1 << 20)}})
    wording = {"expanded": "an expanded or overlapping view", "built by the pickle": "not built by its pickle",
               "inflating pickle": "inflates to"}
    for (kind, _), outcome in zip(batch, run_cases(cases)):
        assert_refused(outcome, wording[kind])


# --- safetensors headers -----------------------------------------------------------------------------------------

def many_empty_tensors(path: Path, count: int) -> Path:
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(count)}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


@batches(2)
@given(st.lists(st.integers(1_001, 5_000), min_size=3, max_size=3))
def test_safetensors_with_more_tensors_than_the_limit(tmp_path_factory, counts):
    cases = [{"args": ["analyze", many_empty_tensors(tmp_path_factory.mktemp("st") / "m.safetensors", count), "-q"],
              "env": {"HTSR_MAX_TENSORS": "1000"}} for count in counts]
    for count, outcome in zip(counts, run_cases(cases)):
        assert_refused(outcome, f"lists {count:,} tensors", "HTSR_MAX_TENSORS")


def test_the_default_tensor_limit_refuses_a_huge_header_quickly(tmp_path):
    [outcome] = run_cases([{"args": ["analyze", many_empty_tensors(tmp_path / "m.safetensors", 250_000), "-q"]}])
    assert_refused(outcome, "lists 250,000 tensors", seconds=60)  # a hang guard: before the cap this took 75 s and 4 GB


# --- quantized parts whose shapes cannot be ----------------------------------------------------------------------

def gptq_file(place: Path, change) -> Path:
    weight = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    parts = gptq_parts(weight, bits=4, group_size=32, act_order=False, symmetric=False, v2=False)
    change(parts)
    save_file({f"layer.{role}": tensor.contiguous() for role, tensor in parts.items()}, str(place / "m.safetensors"))
    (place / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 32, "desc_act": False}))
    return place / "m.safetensors"


@batches(2)
@given(st.lists(st.one_of(
    st.tuples(st.just("g_idx"), st.sampled_from([-5, -1, 2, 3, 1000, 2**31 - 1])),
    st.tuples(st.just("scales"), st.sampled_from(["scalar", "3-D", "vector"])),
    st.tuples(st.just("weight_shape"), st.integers(10**4, 10**9)),
), min_size=5, max_size=5))
def test_quantized_parts_with_impossible_shapes(tmp_path_factory, batch):
    cases = []
    for kind, value in batch:
        place = tmp_path_factory.mktemp("q")
        if kind == "g_idx":
            path = gptq_file(place, lambda parts: parts["g_idx"].__setitem__(7, value))
        elif kind == "scales":
            reshape = {"scalar": lambda s: s[0, 0], "3-D": lambda s: s.unsqueeze(0), "vector": lambda s: s[0]}[value]
            path = gptq_file(place, lambda parts: parts.__setitem__("scales", reshape(parts["scales"])))
        else:
            path = place / "m.safetensors"
            save_file({"layer.weight_packed": torch.zeros(4, 1, dtype=torch.int32),
                       "layer.weight_shape": torch.tensor([value, value]),
                       "layer.weight_scale": torch.ones(1)}, str(path))
        cases.append({"args": ["analyze", path, "-q"]})
    for (kind, _), outcome in zip(batch, run_cases(cases)):
        needle = {"g_idx": "layer.g_idx", "scales": "layer.scales", "weight_shape": "layer.weight_packed"}[kind]
        assert_refused(outcome, needle)


# --- names and links inside a checkpoint directory ---------------------------------------------------------------

@batches(2)
@given(st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\0/"), min_size=1, max_size=12), min_size=3, max_size=3))
def test_shard_names_with_a_nul_byte(tmp_path_factory, names):
    cases = []
    for name in names:
        model = tmp_path_factory.mktemp("nul") / "model"
        model.mkdir()
        shard = f"{name}\0.safetensors"
        (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
        cases.append({"args": ["analyze", model, "-q"]})
    for outcome in run_cases(cases):
        assert_refused(outcome, "NUL character")


def test_a_symlink_loop_in_a_checkpoint_directory_is_named(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").symlink_to("model.safetensors")
    (model / "pytorch_model.bin").symlink_to("loop.bin")
    (model / "loop.bin").symlink_to("pytorch_model.bin")
    [outcome] = run_cases([{"args": ["analyze", model, "-q"]}])
    assert_refused(outcome, "model.safetensors: too many levels of symbolic links")
