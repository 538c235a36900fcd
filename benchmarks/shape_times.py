"""Seconds htsr takes per matrix of given shapes, and how fast this machine reads a checkpoint.

    python benchmarks/shape_times.py --device cuda --shape 32000x8192 --shape 8192x28672 \
        --repeats 3 --read benchmarks/work/llama-h2048-i5632-L4-v32000-bf16 --out times.json

Each shape is one random bf16 matrix in memory, analysed by the library
(`htsr_cli.analyze({key: W}, device=...)`, htsr's default precision): the
host-to-device copy, Gram, eigensolve and fit of that one matrix, timed in a
warm process (one small matrix is analysed first, untimed, so start-up and
device initialisation are not counted). The fastest of `--repeats` runs is
kept. `--read` times reading every weight of a checkpoint with safetensors,
one tensor at a time (the page cache is whatever the machine left in it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# As in run.py: an installed htsr wins; a bare copy of the tree (a GPU machine) uses the source.
sys.path.append(str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from accuracy import report_facts  # noqa: E402
from checkpoints import INIT_STD, SEED  # noqa: E402
from weights import weight_matrices  # noqa: E402


def parse_shape(text: str) -> tuple[int, int]:
    rows, _, cols = text.partition("x")
    return int(rows), int(cols)


def seconds_per_matrix(shape: tuple[int, int], device: str, repeats: int) -> tuple[float, dict]:
    """Fastest wall time of analysing one matrix of `shape`, and the report's precision settings."""
    from htsr_cli import analyze

    generator = torch.Generator().manual_seed(SEED)
    weight = (torch.randn(shape, generator=generator) * INIT_STD).to(torch.bfloat16)
    times, settings = [], {}
    for _ in range(repeats):
        started = time.perf_counter()
        report = analyze({"model.layers.0.mlp.down_proj.weight": weight}, device=device)
        times.append(time.perf_counter() - started)  # alpha is a host float: the device work is done
        settings = report_facts(report.to_json())["settings"]
    return min(times), settings


def read_bandwidth(checkpoint: Path) -> dict:
    started = time.perf_counter()
    total = 0
    for _, weight in weight_matrices(checkpoint):
        total += weight.numel() * weight.element_size()
        del weight
    seconds = time.perf_counter() - started
    return {"checkpoint": checkpoint.name, "bytes": total, "seconds": seconds, "bytes_per_s": total / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", action="append", type=parse_shape, default=[], help="ROWSxCOLS, repeatable")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--read", type=Path, help="a checkpoint to time reading")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    seconds_per_matrix((64, 64), args.device, 1)  # warm-up: imports, device initialisation, solver handles
    shapes = []
    for shape in args.shape:
        seconds, settings = seconds_per_matrix(shape, args.device, args.repeats)
        shapes.append({"shape": list(shape), "seconds": seconds, "repeats": args.repeats, "settings": settings})
        print(f"{shape[0]}x{shape[1]}: {seconds:.3f} s per matrix", file=sys.stderr, flush=True)
    result = {"device": args.device, "shapes": shapes}
    if args.read is not None:
        result["read"] = read_bandwidth(args.read)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{len(shapes)} shapes timed on {args.device}")


if __name__ == "__main__":
    main()
