"""Batched and concurrent solves (issues 10 and 15): they change the speed, never a number.

Every comparison here is exact (bitwise): a matrix's eigenvalues must not depend
on the matrices it is batched with, on a second solve running beside it, or on
which other matrices a rank of a distributed run was given.
"""

from __future__ import annotations

import threading

import pytest
import torch

import htsr_cli
from htsr_cli.engine import pipeline as analysis
from htsr_cli.engine import scheduling
from htsr_cli.checkpoints import open_checkpoint
from htsr_cli.spectra.matrices import describe
from htsr_cli.settings import AnalyzeSettings, FarmsSettings
from htsr_cli.spectra.solver import Eigensolver

from tests.conftest import FIXTURES, small_state_dict
from tests.spectra.test_precision import near_tie


@pytest.fixture
def two_threads():
    """Two torch threads, so the CPU path solves two batches at once even on a 1-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def many_matrices(seed: int = 0) -> dict[str, torch.Tensor]:
    """Same-shape projections, a conv, a fused expert tensor, and odd shapes in between."""
    g = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for block in range(2):
        for name in ("q", "k", "v", "o"):
            weights[f"layers.{block}.attn.{name}.weight"] = torch.randn(64, 64, generator=g).to(torch.bfloat16)
        weights[f"layers.{block}.mlp.experts.gate_up_proj"] = torch.randn(6, 96, 64, generator=g).to(torch.bfloat16)
        weights[f"layers.{block}.mlp.experts.down_proj"] = torch.randn(6, 64, 48, generator=g).to(torch.bfloat16)
        weights[f"layers.{block}.mlp.gate.weight"] = torch.randn(6, 64, generator=g).to(torch.bfloat16)
        weights[f"layers.{block}.conv.weight"] = torch.randn(32, 16, 3, 3, generator=g)
        weights[f"layers.{block}.wide.weight"] = torch.randn(40, 130, generator=g) ** 3
    return weights


def layer_dicts(report: htsr_cli.Report) -> list[dict]:
    return [layer.to_json(with_farms=True) for layer in report.layers]


@pytest.mark.parametrize("source", ["many", "state_dict", "tiny-llama", "resnet18_w16.pth"])
def test_two_solves_at_once_give_the_numbers_of_one_at_a_time(two_threads, source):
    checkpoint = {"many": many_matrices(), "state_dict": small_state_dict()}.get(source, FIXTURES / source)
    farms = FarmsSettings(window=40, steps=3) if source == "state_dict" else None
    together = htsr_cli.analyze(checkpoint, farms=farms, profile=True)
    alone = htsr_cli.analyze(checkpoint, farms=farms, concurrent_solves=False)
    assert layer_dicts(together) == layer_dicts(alone)
    assert together.timings.matrices == sum(layer.status != "skipped" for layer in together.layers)


def test_batched_and_one_at_a_time_solves_give_identical_numbers(monkeypatch):
    weights = many_matrices(1)
    batched = htsr_cli.analyze(weights, profile=True)
    monkeypatch.setattr(scheduling, "MAX_BATCH_SLICES", 1)
    single = htsr_cli.analyze(weights, profile=True)
    assert layer_dicts(batched) == layer_dicts(single)
    # 2 blocks x (4 projections + 12 expert halves + 6 experts + conv + wide) = 48 solved layers;
    # the 6 x 64 routers (6 eigenvalues < min_evals) are skipped.
    assert batched.timings.matrices == single.timings.matrices == single.timings.batches == 48
    assert [layer.status for layer in batched.layers if layer.name.endswith("mlp.gate")] == ["skipped"] * 2
    assert batched.timings.batches <= 12  # q/k/v/o together, each fused tensor's experts together


def test_any_partition_of_the_specs_gives_the_same_numbers():
    """What a distributed run does: each rank solves some of the specs, in any grouping."""
    settings = AnalyzeSettings()
    solver = Eigensolver.create("cpu", settings.precision)
    with open_checkpoint(many_matrices(2)) as checkpoint:
        specs = analysis.plan_layers(checkpoint, settings)
        whole = analysis.solve_layers(checkpoint, specs, settings, solver)
        parts = [analysis.solve_layers(checkpoint, specs[rank::3], settings, solver) for rank in range(3)]
    by_name = {layer.name: layer for part in parts for layer in part.layers}
    assert [layer.name for layer in whole.layers] == [spec.name for spec in specs]
    assert all(by_name[layer.name] == layer for layer in whole.layers)
    assert whole.gram_precisions == {"float32"}


def test_the_next_batch_goes_to_whichever_solve_finishes_first(two_threads, monkeypatch):
    """Batch 0 cannot finish until batch 2 has started: a first-in-first-out schedule would deadlock."""
    weights = {f"layers.{i}.weight": torch.randn(40 + i, 30) for i in range(5)}  # five shapes: five batches
    third_started = threading.Event()
    original = analysis._solve_batch
    order: list[str] = []

    def solve(batch, **options):
        name = batch.specs[0].name
        order.append(name)
        if name == "layers.2":
            third_started.set()
        if name == "layers.0":
            assert third_started.wait(timeout=120), "layers.2 never started while layers.0 was solving"
        return original(batch, **options)

    monkeypatch.setattr(analysis, "_solve_batch", solve)
    report = htsr_cli.analyze(weights)
    # batches 0 and 1 start at once on the two threads, in either order on a busy machine; 2 only after 1 is done
    assert sorted(order[:2]) == ["layers.0", "layers.1"] and order[2] == "layers.2"
    assert [layer.name for layer in report.layers] == [f"layers.{i}" for i in range(5)]  # spec order
    assert all(layer.status == "ok" for layer in report.layers)


def test_batch_order_brings_same_shapes_of_a_block_together():
    def spec(key: str, shape: tuple[int, ...]):
        return describe(key, shape, torch.bfloat16, 2)

    specs = [
        spec("layers.0.mlp.down.weight", (64, 128)),
        spec("layers.0.mlp.up.weight", (128, 64)),  # same Gram as down: 128 long, 64 short
        spec("layers.0.attn.k.weight", (32, 64)),
        spec("layers.0.attn.q.weight", (64, 64)),
        spec("layers.0.attn.v.weight", (32, 64)),
        spec("head.weight", (64, 64)),
        spec("layers.1.attn.q.weight", (64, 64)),
    ]
    assert scheduling.batch_order(specs) == [0, 1, 2, 4, 3, 5, 6]


@pytest.mark.parametrize("precision", ["mixed", "float32"])
def test_fits_on_a_thread_pool_give_the_inline_numbers(monkeypatch, precision):
    """The GPU path's orchestration (one solve thread, eigenvalues copied to the host once per
    batch, fits and the float32 guard's redo on a CPU pool), run on the CPU."""
    weights = {**many_matrices(3), "layers.9.near_tie.weight": near_tie()}  # a layer the guard redoes
    farms = FarmsSettings(window=32, steps=3)
    inline = htsr_cli.analyze(weights, farms=farms, precision=precision, keep_spectra=True)
    monkeypatch.setattr(analysis, "_fits_on_a_pool", lambda solver: True)
    pooled = htsr_cli.analyze(weights, farms=farms, precision=precision, keep_spectra=True)
    assert layer_dicts(pooled) == layer_dicts(inline)
    assert pooled.spectra.keys() == inline.spectra.keys()
    assert all(torch.equal(pooled.spectra[name].esd, inline.spectra[name].esd) for name in inline.spectra)
    if precision == "float32":
        assert any(layer.eigensolver_redone for layer in pooled.layers)  # the redo ran through the pool
