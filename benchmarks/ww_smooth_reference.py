"""WeightWatcher 0.7.7's SVDSmoothing on a tiny model: the reference data of `htsr smooth`'s tests.

    /work/ww/ww-venv/bin/python benchmarks/ww_smooth_reference.py --out tests/data/weightwatcher-0.7.7/smooth.json

Runs inside WeightWatcher's own venv (benchmarks/weightwatcher_env.py makes it;
CUDA hidden, as WeightWatcher switches to float16 torch SVDs by itself when it
sees a GPU). The model has one layer of every kind SVDSmoothing touches
(Linear tall and wide, Conv2d, Embedding) and one it skips (fewer than 8
eigenvalues); each weight is a planted power-law spectrum plus noise, so the
detX condition keeps a few singular values, not all or none. Every matrix is
small enough that WeightWatcher's randomized truncated SVD (10 oversamples) sees
the whole column space, so its smoothing is the exact best rank-k approximation
up to float32 rounding: the test compares at 1e-5 of the largest weight.

The file holds, per method (`svd` with percent 0.5, and `detX`), every layer's
weights before and after, as float32 values in their shortest decimal form.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

PERCENT = 0.5


def planted(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """U diag(s) V^T with s_i = 3 i^-1.2 on the min(rows, cols) directions, plus Gaussian noise of scale 0.05."""
    rank = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, rank, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, rank, generator=generator, dtype=torch.float64))
    spectrum = 3.0 * torch.arange(1, rank + 1, dtype=torch.float64) ** -1.2
    noise = 0.05 * torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    return (u @ torch.diag(spectrum) @ v.T + noise).float()


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(24, 10)
        self.conv = nn.Conv2d(5, 7, 3, bias=False)
        self.tall = nn.Linear(12, 20)
        self.wide = nn.Linear(20, 9)
        self.small = nn.Linear(6, 4)  # 4 eigenvalues < WeightWatcher's min_evals 8: left as it is


def build() -> Tiny:
    generator = torch.Generator().manual_seed(7)
    model = Tiny()
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if weight is None:
                continue
            if weight.dim() == 4:
                slices = [planted(weight.shape[0], weight.shape[1], generator) for _ in range(weight.shape[2] * weight.shape[3])]
                weight.copy_(torch.stack(slices, dim=-1).reshape(weight.shape))
            else:
                weight.copy_(planted(*weight.shape, generator))
            bias = getattr(module, "bias", None)
            if bias is not None:
                bias.copy_(0.1 * torch.randn(bias.shape, generator=generator))
    return model


def as_numbers(tensor: torch.Tensor) -> list:
    """Nested lists of float32 values in their shortest round-tripping decimal form."""
    flat = [float(np.format_float_positional(x, unique=True, trim="-")) for x in tensor.detach().float().numpy().reshape(-1)]
    return np.array(flat, dtype=object).reshape(tuple(tensor.shape)).tolist()


def weights(model: nn.Module) -> dict[str, list]:
    return {name: as_numbers(tensor) for name, tensor in model.state_dict().items() if name.endswith("weight")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import weightwatcher

    model = build()
    document = {
        "generator": "benchmarks/ww_smooth_reference.py",
        "weightwatcher": weightwatcher.__version__,
        "torch": torch.__version__,
        "tolerance": "1e-5 x the layer's largest |weight|: WeightWatcher smooths in float32",
        "input": weights(model),
        "biases": {name: as_numbers(tensor) for name, tensor in model.state_dict().items() if name.endswith("bias")},
        "runs": {},
    }
    for method, options in (("svd", {"method": "svd", "percent": PERCENT}), ("detX", {"method": "detX"})):
        smoothed = weightwatcher.WeightWatcher().SVDSmoothing(model=copy.deepcopy(model), **options)
        document["runs"][method] = {"options": options, "output": weights(smoothed)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
