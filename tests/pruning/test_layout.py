"""The pruned output's staging: SIGTERM removes it, and a source cut short while rewritten is one error."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from safetensors.torch import save_file

from htsr_cli.errors import HtsrError
from htsr_cli.pruning.layout import staged_output


def test_sigterm_inside_the_staged_output_removes_it(tmp_path):
    with pytest.raises(SystemExit) as stopped:
        with staged_output(tmp_path / "out") as staging:
            (staging / "half-written").write_text("x")
            os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_source_truncated_while_pruning_is_one_error_not_a_crash(tmp_path):
    """Tensors are read into their own buffers: a source cut short after it was opened raises HtsrError
    (the CLI's one line, exit 2) where a memory-mapped read would die of SIGBUS."""
    from htsr_cli.pruning.layout import rewrite_weights

    source, target = tmp_path / "model.safetensors", tmp_path / "out.safetensors"
    save_file({"a.weight": torch.ones(64, 64), "b.weight": torch.ones(256, 256)}, str(source))
    seen = []

    def prune(key, load):
        if not seen:
            with source.open("r+b") as handle:  # another process rewrites the file meanwhile
                handle.truncate(source.stat().st_size - 4096)
        seen.append(key)
        return torch.zeros_like(load())

    with pytest.raises(HtsrError, match=r"cannot read tensor 'b\.weight' \(the file ends 4,096 bytes short"):
        rewrite_weights(source, target, prune)
    assert seen == ["a.weight", "b.weight"]
