"""WeightWatcher 0.7.7 on a Hugging Face directory or a PyTorch state dict, the way its users run it.

    benchmarks/work/ww-venv/bin/python benchmarks/ww_runner.py CHECKPOINT_DIR --out details.json
    benchmarks/work/ww-venv/bin/python benchmarks/ww_runner.py resnet50.pth --out details.json

Runs inside WeightWatcher's own venv (benchmarks/weightwatcher_env.py), not
htsr's: it imports transformers and weightwatcher only. It builds the model
class named in config.json, loads the safetensors weights with
`from_pretrained` (in the dtype they are stored in, transformers' default) and
calls `WeightWatcher(model=model).analyze(**ANALYZE_SETTINGS)`. The per-layer
alphas go to `--out` as JSON, so the benchmark can compare them with htsr's.

A state dict (`.pth`) has no class to build: the module tree its keys name is
rebuilt from plain torch modules (`nn.Conv2d`, `nn.Linear`, `nn.BatchNorm2d`
with the stored shapes; no torchvision) and the weights loaded into it, which
is all WeightWatcher reads (it never runs the model).
"""

from __future__ import annotations

import argparse
import json
import math
import time

# As close to `htsr analyze`'s defaults as WeightWatcher allows; every choice
# is spelled out even where it is WeightWatcher's own default.
ANALYZE_SETTINGS = {
    "plot": False,  # htsr draws nothing unless --plots
    "randomize": False,  # no randomized-ESD / correlation-trap pass (--randomize turns it on, as htsr's)
    "mp_fit": False,  # no Marchenko-Pastur fit (--mp-fit turns it on, as htsr's)
    "fix_fingers": False,  # htsr does not remove outlier eigenvalues before the fit
    "vectors": False,  # no eigenvector metrics
    "detX": False,
    "min_evals": 10,  # htsr's --min-evals default (WeightWatcher's own is 8): the same layers
    "pool": True,  # conv slices pooled into one ESD, as htsr does
}


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def plain_module(state: dict):
    """An nn.Module whose parameters and buffers are named and shaped as `state`'s tensors."""
    import torch
    from torch import nn

    root = nn.Module()
    owners = {}
    for key in state:
        path, _, leaf = key.rpartition(".")
        owners.setdefault(path, set()).add(leaf)
    for path, leaves in owners.items():
        weight = state.get(f"{path}.weight")
        if weight is not None and weight.dim() == 4:
            out_channels, in_channels, *kernel = weight.shape
            module = nn.Conv2d(in_channels, out_channels, tuple(kernel), bias="bias" in leaves)
        elif weight is not None and weight.dim() == 2:
            module = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in leaves)
        elif "running_mean" in leaves:
            module = nn.BatchNorm2d(state[f"{path}.running_mean"].numel())
        else:
            raise ValueError(f"{path}: no plain module holds {sorted(leaves)}")
        parent = root
        names = path.split(".")
        for name in names[:-1]:
            if not hasattr(parent, name):
                parent.add_module(name, nn.Module())
            parent = getattr(parent, name)
        parent.add_module(names[-1], module)
    root.load_state_dict(state, strict=True)
    return root.to(torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="per-layer alphas as JSON")
    parser.add_argument("--mp-fit", action="store_true", help="also WeightWatcher's Marchenko-Pastur fits (mp_fit=True)")
    parser.add_argument("--randomize", action="store_true", help="also its randomization pass (randomize=True)")
    args = parser.parse_args()
    settings = {**ANALYZE_SETTINGS, "mp_fit": args.mp_fit, "randomize": args.randomize}
    started = time.perf_counter()

    import weightwatcher

    if args.checkpoint.endswith((".pth", ".pt")):
        import torch

        model = plain_module(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
        model_class = type(model)
    else:
        import transformers

        config = transformers.AutoConfig.from_pretrained(args.checkpoint)
        model_class = getattr(transformers, config.architectures[0]) if config.architectures else transformers.AutoModel
        model = model_class.from_pretrained(args.checkpoint)
    loaded = time.perf_counter()
    details = weightwatcher.WeightWatcher(model=model).analyze(**settings)
    analysed = time.perf_counter()
    layers = [
        {"name": row["longname"], "alpha": _number(row["alpha"]), "xmin": _number(row["xmin"]), "num_evals": int(row["num_evals"])}
        for _, row in details.iterrows()
    ]
    result = {
        "weightwatcher": weightwatcher.__version__,
        "model_class": model_class.__name__,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "settings": settings,
        "layers": layers,
        "seconds": {"import_and_load": loaded - started, "analyze": analysed - loaded},
    }
    with open(args.out, "w") as file:
        json.dump(result, file, indent=1)
    print(f"{len(layers)} layers analysed; imports + load {loaded - started:.1f} s, analyze {analysed - loaded:.1f} s")


if __name__ == "__main__":
    main()
