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

`--plain-modules` does the same for a Hugging Face directory, from its
safetensors files and in their stored dtype. The MoE benchmark needs it:
transformers 5 fuses a Qwen3-MoE layer's per-expert `gate_proj`, `up_proj`
and `down_proj` (stored one tensor per expert) into 3-D parameters of one
module, which WeightWatcher does not analyse (measured: 18 of the checkpoint's
790 weight matrices), so `from_pretrained` would compare a different set of layers.
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


def plain_module(state: dict, dtype=None):
    """An nn.Module whose parameters and buffers are named and shaped as `state`'s tensors.

    4-D weights become `nn.Conv2d`, 2-D ones `nn.Linear` (what WeightWatcher
    analyses), BatchNorm statistics `nn.BatchNorm2d`; anything else (norm scales,
    biases of no layer) is held by a bare module WeightWatcher skips. `dtype`:
    the parameters' dtype, the stored one when None.
    """
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
            module = nn.Module()
            for leaf in leaves:
                module.register_parameter(leaf, nn.Parameter(torch.empty_like(state[f"{path}.{leaf}"]), requires_grad=False))
        parent = root
        names = path.split(".")
        for name in names[:-1]:
            if not hasattr(parent, name):
                parent.add_module(name, nn.Module())
            parent = getattr(parent, name)
        parent.add_module(names[-1], module)
    # assign: the modules take the stored tensors themselves (their dtype, no second copy of the model).
    root.load_state_dict(state, strict=True, assign=True)
    return root if dtype is None else root.to(dtype)


def stored_state(directory: str) -> dict:
    """Every tensor of a Hugging Face directory's safetensors files, as stored."""
    from pathlib import Path

    from safetensors.torch import load_file

    state = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        state.update(load_file(file))
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="per-layer alphas as JSON")
    parser.add_argument("--mp-fit", action="store_true", help="also WeightWatcher's Marchenko-Pastur fits (mp_fit=True)")
    parser.add_argument("--randomize", action="store_true", help="also its randomization pass (randomize=True)")
    parser.add_argument(
        "--plain-modules",
        action="store_true",
        help="build the module tree from the directory's stored tensors instead of from_pretrained (MoE experts)",
    )
    args = parser.parse_args()
    settings = {**ANALYZE_SETTINGS, "mp_fit": args.mp_fit, "randomize": args.randomize}
    started = time.perf_counter()

    import weightwatcher

    if args.checkpoint.endswith((".pth", ".pt")):
        import torch

        model = plain_module(torch.load(args.checkpoint, map_location="cpu", weights_only=True), torch.float32)
        model_class = type(model)
    elif args.plain_modules:
        model = plain_module(stored_state(args.checkpoint))
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
