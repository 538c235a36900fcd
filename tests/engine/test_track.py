"""htsr_cli.engine.track: finding a run's checkpoints, the cache, joining evaluations, Spearman."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import htsr_cli.engine.track as track
from htsr_cli.engine.track import (
    CACHE_NAME,
    find_checkpoints,
    join_by_step,
    ranks,
    spearman,
    track_run,
)
from htsr_cli.errors import HtsrError
from htsr_cli.settings import AnalyzeSettings

SETTINGS = AnalyzeSettings(device="cpu", min_evals=4)


def _weights(seed: int, width: int = 24) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"blocks.{i}.fc.weight": torch.randn(32, width, generator=generator) for i in range(2)}


def _trainer_run(root: Path, steps: list[int], log_history: list[dict] | None = None) -> Path:
    for step in steps:
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file(_weights(step), folder / "model.safetensors")
        torch.save({"not": "weights"}, folder / "optimizer.pt")
    if log_history is not None:
        (root / f"checkpoint-{steps[-1]}" / "trainer_state.json").write_text(json.dumps({"log_history": log_history}))
    return root


def test_ranks_average_ties_and_spearman_matches_the_definition():
    assert ranks([10.0, 20.0, 20.0, 5.0]) == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # With ties: Pearson's r of the averaged ranks [1, 2.5, 2.5, 4] and [1, 2, 3, 4].
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert spearman([1, 2], [1, 2]) is None  # too few points
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # a constant side


def test_join_by_step_takes_the_last_value_since_the_previous_checkpoint():
    logged = [(3, "eval_loss", 0.9), (4, "eval_loss", 0.8), (6, "eval_loss", 0.7), (7, "eval_loss", 0.6), (7, "loss", 1.0)]
    assert join_by_step([4, 8, 12], logged) == [{"eval_loss": 0.8}, {"eval_loss": 0.6, "loss": 1.0}, {}]


def test_finds_trainer_and_lightning_checkpoints_by_step(tmp_path):
    _trainer_run(tmp_path / "hf", [10, 2, 100])
    _, found = find_checkpoints([str(tmp_path / "hf")])
    assert [(c.name, c.step) for c in found] == [("checkpoint-2", 2), ("checkpoint-10", 10), ("checkpoint-100", 100)]
    lightning = tmp_path / "pl" / "lightning_logs" / "version_0" / "checkpoints"
    lightning.mkdir(parents=True)
    for name in ("epoch=1-step=20.ckpt", "epoch=0-step=5.ckpt", "last.ckpt"):
        torch.save({"state_dict": _weights(0)}, lightning / name)
    _, found = find_checkpoints([str(tmp_path / "pl")])
    assert [(c.name, c.step) for c in found] == [("epoch=0-step=5.ckpt", 5), ("epoch=1-step=20.ckpt", 20)]


def test_a_run_with_the_final_model_beside_its_checkpoints_is_a_run(tmp_path):
    run = _trainer_run(tmp_path, [1, 2])
    save_file(_weights(3), run / "model.safetensors")
    (run / "config.json").write_text("{}")
    found_run, found = find_checkpoints([str(run)])
    assert found_run == run and [c.step for c in found] == [1, 2]
    single_run, single = find_checkpoints([str(run / "checkpoint-1")])
    assert single_run is None and [c.path for c in single] == [run / "checkpoint-1"]


def test_paths_in_order_take_their_position_as_step(tmp_path):
    for name in ("b.safetensors", "a.safetensors"):
        save_file(_weights(1), tmp_path / name)
    run, found = find_checkpoints([str(tmp_path / "b.safetensors"), str(tmp_path / "a.safetensors")])
    assert run is None and [(c.name, c.step) for c in found] == [("b.safetensors", 0), ("a.safetensors", 1)]


def test_empty_run_directory(tmp_path):
    with pytest.raises(HtsrError, match="no checkpoints found"):
        find_checkpoints([str(tmp_path)])


def test_different_architectures_in_one_run(tmp_path):
    run = _trainer_run(tmp_path, [1])
    (run / "checkpoint-2").mkdir()
    save_file(_weights(2, width=20), run / "checkpoint-2" / "model.safetensors")
    with pytest.raises(HtsrError, match=r"different architectures in one run: checkpoint-1 and checkpoint-2 \(blocks.0.fc is \[32, 24\]"):
        track_run([str(run)], SETTINGS)


def test_unreadable_trainer_state(tmp_path):
    run = _trainer_run(tmp_path, [1, 2])
    (run / "checkpoint-2" / "trainer_state.json").write_text('{"log_history": 3}')
    with pytest.raises(HtsrError, match="unreadable trainer_state.json"):
        track_run([str(run)], SETTINGS)


def test_cache_analyses_only_new_checkpoints_and_survives_an_interrupt(tmp_path, monkeypatch):
    history = [{"step": 1, "eval_loss": 0.5}, {"step": 2, "eval_loss": 0.4}, {"step": 3, "eval_loss": 0.45}]
    run = _trainer_run(tmp_path, [1, 2, 3], history)
    analysed: list[str] = []
    real = track.analyze

    def counting(source, settings, **keywords):
        analysed.append(Path(source).name)
        if Path(source).name == "checkpoint-3" and len(analysed) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third checkpoint
        return real(source, settings, **keywords)

    monkeypatch.setattr(track, "analyze", counting)
    with pytest.raises(KeyboardInterrupt):
        track_run([str(run)], SETTINGS)
    cache = json.loads((run / CACHE_NAME).read_text())
    assert sorted(Path(key).name for key in cache["entries"]) == ["checkpoint-1", "checkpoint-2"]
    first = track_run([str(run)], SETTINGS)
    assert analysed == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-3"]
    assert [item.reused for item in first.checkpoints] == [True, True, False]
    assert [item.evaluation for item in first.checkpoints] == [{"eval_loss": 0.5}, {"eval_loss": 0.4}, {"eval_loss": 0.45}]
    # A copied file (new mtime, same bytes) is still reused; changed bytes are analysed again.
    weights = run / "checkpoint-2" / "model.safetensors"
    os.utime(weights, ns=(1, 1))
    save_file(_weights(99), run / "checkpoint-1" / "model.safetensors")
    again = track_run([str(run)], SETTINGS)
    assert analysed[4:] == ["checkpoint-1"]
    assert [item.reused for item in again.checkpoints] == [False, True, True]
    # Other settings: nothing reused (and the cache now holds those).
    median = AnalyzeSettings(device="cpu", min_evals=4, xmin="median")
    track_run([str(run)], median)
    assert analysed[5:] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    # The run directory moved, reached from elsewhere: its cache still holds every checkpoint.
    moved = tmp_path.parent / "moved-run"
    run.rename(moved)
    monkeypatch.chdir(moved)
    assert [item.reused for item in track_run(["."], median).checkpoints] == [True, True, True]
    assert len(analysed) == 8


def test_report_values_equal_analyze_on_each_checkpoint(tmp_path):
    from htsr_cli.engine.pipeline import analyze

    run = _trainer_run(tmp_path, [5, 6])
    tracked = track_run([str(run)], SETTINGS, use_cache=False)
    rows = tracked.layer_rows()
    assert [(row["step"], row["layer"]) for row in rows] == [(5, "blocks.0.fc"), (5, "blocks.1.fc"), (6, "blocks.0.fc"), (6, "blocks.1.fc")]
    direct = analyze(str(run / "checkpoint-6"), SETTINGS)
    assert [row["alpha"] for row in rows[2:]] == [layer.alpha for layer in direct.layers]
    assert not (run / CACHE_NAME).exists()
