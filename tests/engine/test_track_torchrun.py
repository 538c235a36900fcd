"""htsr track under torchrun (2 ranks, gloo, CPU): each checkpoint's analysis is a collective
job of rank 0, so the run's document equals a single process's."""

from __future__ import annotations

import json

import pytest

from tests.engine.test_distributed import TINY_LLAMA, standalone, torchrun

pytestmark = pytest.mark.slow


def test_track_under_two_ranks_equals_one_process(tmp_path, cli):
    cache = tmp_path / "cache.json"
    done = torchrun(standalone(), "-m", "htsr_cli", "track", TINY_LLAMA, TINY_LLAMA, "--cache", cache, "-f", "json",
                    "-o", tmp_path / "ranked.json", "-q", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    ranked = json.loads((tmp_path / "ranked.json").read_text())
    alone = cli("track", TINY_LLAMA, TINY_LLAMA, "--no-cache", "-f", "json", "-q", "--device", "cpu")
    assert alone.exit_code == 0, alone.output
    single = json.loads(alone.stdout)
    assert [row["alpha"] for row in ranked["layers"]] == pytest.approx([row["alpha"] for row in single["layers"]], rel=1e-12)
    assert len(json.loads(cache.read_text())["entries"]) == 1  # one path, given twice: one entry
