"""WeightWatcher 0.7.7's TPL fit, finger clipping and small-N path, as reference numbers.

    /work/ww/ww-venv/bin/python benchmarks/ww_reference_fits.py MINILM_DIR \
        --out tests/data/weightwatcher-0.7.7/fits.json

Runs inside WeightWatcher's own venv (benchmarks/weightwatcher_env.py), not
htsr's. Two kinds of numbers go to `--out`, compact (17 significant digits):

- models: `WeightWatcher(model).analyze(...)` on MiniLM (BertModel), the tiny
  CNN fixture (fixtures/layouts.TinyCNN, trained weights) and the tiny Llama
  fixture, once with WeightWatcher's defaults (small layers take its small-N
  path), once with fix_fingers="clip_xmax", and on the layers in TPL_LAYERS
  with fit="TPL" (which WeightWatcher only runs with pl_package="powerlaw").
  Per layer: WeightWatcher's columns for it.
- spectra: `WeightWatcher().fit_powerlaw(evals, ...)` called directly on
  eigenvalue arrays stored beside its results: seeded random small spectra
  (2..19 eigenvalues and 20, the small-N cutoff), seeded spectra with planted
  outliers ("fingers"), and two MiniLM layers' ESDs (WeightWatcher's own
  eigenvalues, so the fit functions can be compared bit for bit).

Each TPL fit takes WeightWatcher seconds to minutes (a numerical fit per xmin
candidate): TPL and E_TPL are fitted on the spectra of TPL_MAX_SIZE or fewer
eigenvalues and the model layers in TPL_LAYERS only.

fit="TPL" and "E_TPL" fail on every layer in WeightWatcher 0.7.7 as pip installs
it today: its `pl_fit` passes `distribution=` to `powerlaw.Fit`, which powerlaw
2.0.0 (the only version its unpinned requirement resolves to) refuses with a
TypeError, caught as status "failed". The TPL numbers here are WeightWatcher's
TPL with that one call bridged (`bridge_powerlaw_2`: the same call without the
refused keyword, which powerlaw 1.x ignored); `tpl_unbridged` records the
failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The layers fitted with fit="TPL", per model, and the MiniLM layers whose ESDs are stored.
# MiniLM's layers (384 eigenvalues) take WeightWatcher minutes each: its TPL is
# compared on the small layers of the tiny models and on spectra of TPL_MAX_SIZE or fewer.
TPL_LAYERS = {
    "minilm": (),
    "tiny-cnn-trained": ("conv1", "fc3"),
    "tiny-llama": ("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.q_proj"),
}
TPL_MAX_SIZE = 160
STORED_MINILM_ESDS = ("encoder.layer.0.attention.self.query", "encoder.layer.5.output.dense")
COMMON = {"plot": False, "randomize": False, "mp_fit": False, "vectors": False, "detX": False, "pool": True, "min_evals": 2}
SMALL_SIZES = (2, 3, 5, 7, 8, 9, 12, 15, 19, 20)


def _number(value) -> float | None:
    value = float(value)
    return float(f"{value:.17g}") if math.isfinite(value) else None


def _rows(details, columns: tuple[str, ...]) -> dict[str, dict]:
    return {
        row["longname"]: {"num_evals": int(row["num_evals"]), **{c: _number(row[c]) for c in columns if c in row}}
        for _, row in details.iterrows()
    }


def bridge_powerlaw_2() -> None:
    """Let WeightWatcher's TPL call reach powerlaw 2.0.0: drop the `distribution=` keyword it refuses."""
    import warnings
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    import powerlaw
    from weightwatcher import RMT_Util, WW_powerlaw
    from weightwatcher import weightwatcher as ww_module

    original = WW_powerlaw.pl_fit

    def pl_fit(data=None, xmin=None, xmax=None, verbose=False, distribution="power_law", pl_package="ww"):
        if pl_package == "ww" and distribution == "power_law":
            return original(data=data, xmin=xmin, xmax=xmax, verbose=verbose, distribution=distribution, pl_package=pl_package)
        with redirect_stdout(StringIO()), redirect_stderr(StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return powerlaw.Fit(data, xmin=xmin, xmax=xmax, verbose=verbose, xmin_distribution=distribution)

    ww_module.pl_fit = RMT_Util.pl_fit = pl_fit


def analyse_model(watcher, tpl_layers: list[int]) -> dict:
    """WeightWatcher's per-layer numbers with its defaults, clip_xmax and (on `tpl_layers`) TPL."""
    default = _rows(watcher.analyze(**COMMON), ("alpha", "xmin", "D", "sigma", "num_pl_spikes"))
    clipped = _rows(
        watcher.analyze(**COMMON, fix_fingers="clip_xmax"),
        ("alpha", "raw_alpha", "num_fingers", "xmin", "D", "sigma", "num_pl_spikes"),
    )
    tpl = _rows(
        watcher.analyze(**COMMON, fit="TPL", pl_package="powerlaw", layers=tpl_layers),
        ("alpha", "Lambda", "xmin", "D", "num_pl_spikes"),
    ) if tpl_layers else {}
    layers = []
    for name, row in default.items():
        entry = {"name": name, "num_evals": row["num_evals"], "default": _drop(row), "clip_xmax": _drop(clipped[name])}
        if name in tpl:
            entry["tpl"] = _drop(tpl[name])
        layers.append(entry)
    return {"layers": layers}


def _drop(row: dict) -> dict:
    return {key: value for key, value in row.items() if key != "num_evals"}


def fit_all(watcher, name: str, evals: np.ndarray) -> dict:
    """One spectrum's fits: WeightWatcher's default, clip_xmax and (up to TPL_MAX_SIZE) TPL and E_TPL."""
    fits = {
        "name": name,
        "evals": [_number(v) for v in np.sort(evals)],
        "default": fit_spectrum(watcher, evals),
        "clip_xmax": fit_spectrum(watcher, evals, fix_fingers="clip_xmax"),
    }
    if evals.size <= TPL_MAX_SIZE:
        fits["tpl"] = fit_spectrum(watcher, evals, fit_type="truncated_power_law", pl_package="powerlaw")
        fits["e_tpl"] = fit_spectrum(
            watcher, evals, fit_type="truncated_power_law", fix_fingers="xmin_peak", pl_package="powerlaw"
        )
    return fits


def fit_spectrum(watcher, evals: np.ndarray, **options) -> dict:
    """fit_powerlaw's return values for one eigenvalue array (as WeightWatcher's apply_powerlaw calls it)."""
    alpha, lambda_, xmin, _, d, sigma, spikes, fingers, raw_alpha, status, _ = watcher.fit_powerlaw(
        evals, plot=False, savefig=False, **options
    )
    return {
        "alpha": _number(alpha), "Lambda": _number(lambda_), "xmin": _number(xmin), "D": _number(d),
        "sigma": _number(sigma), "num_pl_spikes": int(spikes), "num_fingers": int(fingers),
        "raw_alpha": _number(raw_alpha), "status": status,
    }


def planted_spectra() -> list[dict]:
    """Seeded spectra: small random ones, and heavy tails with a few planted outliers."""
    spectra = []
    rng = np.random.default_rng(0)
    for n in SMALL_SIZES:
        w = rng.standard_t(3, size=(3 * n, n))
        spectra.append({"name": f"small-{n}", "evals": np.linalg.eigvalsh(w.T @ w / (3 * n))})
    for k, (n, fingers) in enumerate(((120, 2), (300, 3), (60, 1), (400, 0), (40, 5))):
        tail = np.sort((1.0 - rng.random(n)) ** (-1.0 / 2.5))  # Pareto, density exponent 3.5
        planted = tail[-1] * (4.0 + np.arange(fingers))
        spectra.append({"name": f"fingers-{k}", "evals": np.sort(np.concatenate([tail, planted]))})
    for k, (rows, cols, spikes) in enumerate(((200, 50, 3), (120, 40, 6))):
        w = rng.standard_normal((rows, cols)) / math.sqrt(rows)
        w += sum(np.outer(rng.standard_normal(rows), rng.standard_normal(cols)) * (0.3 + 0.1 * s) / math.sqrt(rows * cols) * 6
                 for s in range(spikes))
        spectra.append({"name": f"spiked-{k}", "evals": np.linalg.eigvalsh(w.T @ w)})
    for k, (n, cut) in enumerate(((80, 0.05), (150, 0.2))):
        x = (1.0 - rng.random(4 * n)) ** (-1.0 / 1.2)
        spectra.append({"name": f"truncated-{k}", "evals": np.sort(x[rng.random(4 * n) < np.exp(-cut * x)])[:n]})
    return spectra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("minilm")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    sys.path.insert(0, str(ROOT / "fixtures"))

    import torch
    import transformers
    import weightwatcher
    from layouts import TinyCNN

    started = time.perf_counter()
    watcher = weightwatcher.WeightWatcher()
    unbridged = fit_spectrum(watcher, np.linspace(1.0, 5.0, 30), fit_type="truncated_power_law", pl_package="powerlaw")
    bridge_powerlaw_2()
    spectra = []
    for spectrum in planted_spectra():
        spectra.append(fit_all(watcher, spectrum["name"], np.asarray(spectrum["evals"], dtype=np.float64)))

    minilm = transformers.BertModel.from_pretrained(args.minilm)
    cnn = TinyCNN()
    cnn.load_state_dict(torch.load(ROOT / "fixtures" / "tiny-cnn-trained.pth", map_location="cpu"))
    llama = transformers.LlamaForCausalLM.from_pretrained(ROOT / "fixtures" / "tiny-llama")
    models = {}
    for key, model in (("minilm", minilm), ("tiny-cnn-trained", cnn), ("tiny-llama", llama)):
        model_watcher = weightwatcher.WeightWatcher(model=model)
        described = model_watcher.describe(min_evals=2)
        tpl_ids = [int(r["layer_id"]) for _, r in described.iterrows() if r["longname"] in TPL_LAYERS[key]]
        if key == "minilm":
            for _, row in described.iterrows():
                if row["longname"] in STORED_MINILM_ESDS:
                    evals = np.asarray(model_watcher.get_ESD(layer=int(row["layer_id"])), dtype=np.float64)
                    spectra.append(fit_all(watcher, f"minilm:{row['longname']}", evals))
        models[key] = analyse_model(model_watcher, tpl_ids)

    result = {
        "versions": {name: metadata.version(name) for name in ("weightwatcher", "powerlaw", "scipy", "numpy", "mpmath", "torch")},
        "settings": COMMON,
        "tpl_unbridged": unbridged,
        "spectra": spectra,
        "models": models,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, separators=(",", ":")) + "\n")
    print(f"{len(spectra)} spectra, {sum(len(m['layers']) for m in models.values())} layers in {result['seconds']} s")


if __name__ == "__main__":
    main()
