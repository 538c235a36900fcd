"""benchmarks/gate_evidence.py (`make bench-gate`): the damage it does, the refit, the judged variants and the bands."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))

from gate_evidence import (  # noqa: E402
    DAMAGES, HEALTHY, SOLVES, Model, ModelEvidence, RULE_SETS, as_report, int8, judge, matched_bands, noise_like, per_xmin,
    pruned, rank_one, shuffled, variants,
)

from htsr_cli.engine.pipeline import analyze  # noqa: E402
from htsr_cli.settings import XMIN_METHODS  # noqa: E402
from tests.conftest import FIXTURES  # noqa: E402


def weight(seed: int = 0, shape: tuple[int, ...] = (48, 32)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) ** 3


def test_damage_does_what_it_says():
    w = weight()
    assert torch.count_nonzero(pruned(w)).item() == round(w.numel() * 0.01)
    kept = pruned(w)[pruned(w) != 0].abs()
    assert kept.min() >= w.abs().flatten().sort().values[-len(kept)]  # the largest magnitudes stay
    assert torch.linalg.matrix_rank(rank_one(w).double(), rtol=1e-5).item() == 1  # float32 round-off aside
    conv = weight(1, (8, 4, 3, 3))
    assert rank_one(conv).shape == conv.shape
    assert torch.linalg.matrix_rank(rank_one(conv).reshape(8, -1).double(), rtol=1e-5).item() == 1
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(shuffled(w, generator).flatten().sort().values, w.flatten().sort().values)
    noise = noise_like(w, generator)
    assert abs(noise.std().item() / w.std().item() - 1.0) < 0.1
    quantized = int8(w)
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert ((quantized - w).abs() <= step / 2 + 1e-6).all()


def test_each_xmin_rule_gets_what_analyze_gives_it():
    # one solve per precision htsr uses (peak: float64), every rule refitted from its eigenvalues
    assert SOLVES == {"mixed": ("ks", "median"), "float64": ("peak",)}
    layers = per_xmin(str(FIXTURES / "tiny-cnn-trained.pth"))
    for xmin in XMIN_METHODS:
        direct = analyze(FIXTURES / "tiny-cnn-trained.pth", xmin=xmin)
        for slot, expected in zip(layers, direct.layers):
            again = slot[xmin]
            assert (again.name, again.alpha, again.xmin, again.quality, again.status) == (
                expected.name, expected.alpha, expected.xmin, expected.quality, expected.status
            ), xmin


def test_every_variant_is_judged_by_every_rule_set():
    base = analyze(FIXTURES / "tiny-cnn-trained.pth")
    model = Model("cnn", FIXTURES / "tiny-cnn-trained.pth", True)
    healthy = {xmin: list(base.layers) for xmin in XMIN_METHODS}
    analysed = [i for i, layer in enumerate(base.layers) if layer.analysed]
    broken = [{xmin: layer for xmin in XMIN_METHODS} for layer in base.layers if layer.analysed]
    for entry in broken:
        for xmin, layer in entry.items():
            entry[xmin] = type(layer)(**{**layer.__dict__, "alpha": None, "status": "fit-failed", "reason": "x"})
    whole = {name: healthy for name in (*HEALTHY[1:], "scrambled")}
    evidence = ModelEvidence(model, healthy, whole, {damage: broken for damage in DAMAGES}, analysed)
    judged = list(variants(evidence, "ks"))
    assert [name for name, _ in judged[:4]] == ["healthy", *HEALTHY[1:], "scrambled"]
    assert len(judged) == 4 + len(DAMAGES) * len(analysed)
    records = judge([evidence])
    assert len(records) == len(XMIN_METHODS) * len(RULE_SETS) * (4 + len(DAMAGES))
    # a layer whose fit failed is caught by the default without a baseline, in every damaged model
    default = next(r for r in records if r["xmin"] == "ks" and r["variant"] == "rank 1" and r["rules"].startswith("**default**, no"))
    assert (default["passed"], default["models"]) == (0, len(analysed))
    bands = matched_bands([evidence])
    # ks's own matched band lies inside [2, 6]: its quantiles at the shares [2, 6] holds
    assert 2.0 <= bands["ks"][0] <= bands["ks"][1] <= 6.0 and set(bands) == set(XMIN_METHODS)
    assert as_report(model, healthy["median"], "median").settings["xmin"] == "median"
