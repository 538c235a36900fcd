"""The streaming safetensors writer `htsr quantize` uses: named tensors replaced by others, the rest copied."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from htsr_cli.pruning.layout import write_replaced_safetensors


def test_replaced_tensors_take_their_place_and_the_rest_is_byte_identical(tmp_path):
    source, target = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    tensors = {
        "a.weight": torch.randn(3, 5),
        "b.weight": torch.randn(4, 2).to(torch.bfloat16),
        "c": torch.arange(7, dtype=torch.int64),
    }
    save_file(tensors, source, metadata={"format": "pt"})
    seen = []

    def replace(key, load):
        seen.append(key)
        weight = load()
        return {"b.weight_half": weight[:2].contiguous(), "b.weight_shape": torch.tensor(weight.shape)}

    layouts = {"b.weight": {"b.weight_half": (torch.bfloat16, (2, 2)), "b.weight_shape": (torch.int64, (2,))}}
    write_replaced_safetensors(source, target, layouts, replace)
    assert seen == ["b.weight"]
    written = load_file(target)
    assert set(written) == {"a.weight", "c", "b.weight_half", "b.weight_shape"}
    assert torch.equal(written["a.weight"], tensors["a.weight"]) and torch.equal(written["c"], tensors["c"])
    assert torch.equal(written["b.weight_half"], tensors["b.weight"][:2]) and written["b.weight_shape"].tolist() == [4, 2]
    with safe_open(target, "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    assert int.from_bytes(target.read_bytes()[:8], "little") % 8 == 0  # the data section starts aligned


def test_a_replacement_that_breaks_its_layout_is_a_bug(tmp_path):
    source = tmp_path / "in.safetensors"
    save_file({"w": torch.zeros(2, 2)}, source)
    layouts = {"w": {"w_packed": (torch.int32, (2, 1))}}
    with pytest.raises(AssertionError, match="laid out"):
        write_replaced_safetensors(source, tmp_path / "out.safetensors", layouts, lambda key, load: {"w_packed": torch.zeros(2, 2, dtype=torch.int32)})
