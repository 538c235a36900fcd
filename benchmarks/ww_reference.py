"""WeightWatcher 0.7.7's random-matrix metrics on MiniLM and the tiny fixtures, stored as test data.

    /work/ww/ww-venv/bin/python benchmarks/ww_reference.py MINILM_DIR --out tests/data/weightwatcher-0.7.7

Runs inside WeightWatcher's own venv (benchmarks/weightwatcher_env.py), like
ww_runner.py: it imports torch, transformers, weightwatcher and fixtures/layouts.py
(plain torch) only. Each model is analysed with `mp_fit=True, randomize=True,
detX=True` with `np.random.seed(0)` (WeightWatcher shuffles with NumPy's
global generator), then again with seeds 1, 2, ... and `randomize=True` alone on
a subset of its layers (`RANDOMIZED_LAYERS`: WeightWatcher's MP fits take
seconds per layer). One compact JSON per model holds, per layer, the
deterministic numbers (the MP fit of the ESD, detX, the power-law xmin and spike
count they are compared with) and the randomized numbers of every seed. tests/spectra/test_random_matrix_ww.py reads
them: deterministic numbers to 1e-6, randomized ones as distributions.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The settings of ww_runner.py (htsr's defaults as far as WeightWatcher allows), with the three passes on.
ANALYZE_SETTINGS = {
    "plot": False,
    "randomize": True,
    "mp_fit": True,
    "detX": True,
    "fix_fingers": False,
    "vectors": False,
    "min_evals": 10,
    "pool": True,
}
DETERMINISTIC = ("N", "M", "num_evals", "alpha", "xmin", "num_pl_spikes", "sigma_mp", "bulk_max", "bulk_min",
                 "num_spikes", "mp_softrank", "detX_num", "detX_val")
RANDOMIZED = ("rand_distance", "ww_softrank", "ww_maxdist", "max_rand_eval", "rand_num_spikes", "rand_bulk_max")
# The layers (regex on the name) whose randomized numbers are drawn for every seed; seed 0 has all of them.
RANDOMIZED_LAYERS = {"tiny-cnn": ".", "tiny-llama": r"layers\.0\.|lm_head", "minilm": r"encoder\.layer\.0\."}
INTEGERS = {"N", "M", "num_evals", "num_pl_spikes", "num_spikes", "detX_num", "rand_num_spikes"}


def _value(key: str, value) -> float | int | None:
    if key in INTEGERS:
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def _models(minilm: Path, only: str | None):
    """(name, source htsr analyses (relative to the repository; "minilm": the packaged model), the module WeightWatcher gets, seeds)."""
    import torch
    import transformers

    sys.path.insert(0, str(ROOT))
    from fixtures.layouts import TinyCNN

    if only in (None, "tiny-cnn"):
        cnn = TinyCNN()
        cnn.load_state_dict(torch.load(ROOT / "fixtures" / "tiny-cnn-trained.pth", map_location="cpu"))
        yield "tiny-cnn", "fixtures/tiny-cnn-trained.pth", cnn, 8
    if only in (None, "tiny-llama"):
        llama = transformers.LlamaForCausalLM.from_pretrained(ROOT / "fixtures" / "tiny-llama")
        yield "tiny-llama", "fixtures/tiny-llama", llama, 6
    if only in (None, "minilm"):
        config = transformers.AutoConfig.from_pretrained(minilm)
        model_class = getattr(transformers, config.architectures[0]) if config.architectures else transformers.AutoModel
        yield "minilm", "minilm", model_class.from_pretrained(minilm), 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("minilm", type=Path, help="all-MiniLM-L6-v2's Hugging Face directory")
    parser.add_argument("--out", type=Path, required=True, help="folder for one JSON per model")
    parser.add_argument("--only", choices=("tiny-cnn", "tiny-llama", "minilm"), help="just this model")
    parser.add_argument("--seeds", type=int, help="randomized runs per model (default: 8, 6 and 4 for the CNN, the Llama and MiniLM)")
    args = parser.parse_args()

    import numpy as np
    import weightwatcher

    args.out.mkdir(parents=True, exist_ok=True)
    for name, source, model, seeds in _models(args.minilm, args.only):
        seeds = args.seeds or seeds
        started = time.perf_counter()
        layers: dict[str, dict] = {}
        np.random.seed(0)
        details = weightwatcher.WeightWatcher(model=model).analyze(**ANALYZE_SETTINGS)
        subset = [int(row["layer_id"]) for _, row in details.iterrows() if re.search(RANDOMIZED_LAYERS[name], row["longname"])]
        for seed in range(seeds):
            if seed > 0:
                np.random.seed(seed)
                randomized_only = {**ANALYZE_SETTINGS, "mp_fit": False, "detX": False}
                details = weightwatcher.WeightWatcher(model=model).analyze(**randomized_only, layers=subset)
            for _, row in details.iterrows():
                if row["longname"] not in layers:  # seed 0's run, which has every layer and number
                    layers[row["longname"]] = {key: _value(key, row[key]) for key in DETERMINISTIC}
                layer = layers[row["longname"]]
                for key in RANDOMIZED:
                    layer.setdefault(key, []).append(_value(key, row[key]))
        document = {
            "weightwatcher": weightwatcher.__version__,
            "source": source,
            "settings": ANALYZE_SETTINGS,
            "seeds": seeds,
            "randomized_layers": RANDOMIZED_LAYERS[name],
            "layers": [{"name": key, **values} for key, values in layers.items()],
        }
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(document, separators=(",", ":")) + "\n")
        print(f"{name}: {len(layers)} layers x {seeds} seeds in {time.perf_counter() - started:.1f} s -> {path}")


if __name__ == "__main__":
    main()
