"""The torch side of `make gpu-check`: each subcommand runs in its own process, started by gpu_check.py.

    python benchmarks/gpu_check_worker.py environment RESULT.json
    python benchmarks/gpu_check_worker.py llama-shaped DIR --hidden 4096 --intermediate 11008 --layers 2
    python benchmarks/gpu_check_worker.py language-model DIR
    python benchmarks/gpu_check_worker.py profile CHECKPOINT --device cuda --report REPORT.json --result RESULT.json
    python benchmarks/gpu_check_worker.py stage-split CHECKPOINT --device cuda --result RESULT.json
    python benchmarks/gpu_check_worker.py masks PRUNED_A PRUNED_B --result RESULT.json

Needs only what a bare GPU machine has (torch, safetensors, transformers) and the
source tree on PYTHONPATH. The driver stays free of torch so that each of these
processes' peak RSS is its own (Linux carries a parent's peak into a forked child).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# As in run.py: an installed htsr wins; a bare copy of the tree (a GPU machine) uses the source.
sys.path.append(str(ROOT))

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

INIT_STD = 0.02  # LLaMA's initializer_range: the bulk of every generated matrix
SEED = 0
# Planted tail exponents, cycled over the generated matrices so their alphas differ.
PLANTED_ALPHAS = (2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 2.2)
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


# --- environment --------------------------------------------------------------------------------


def environment(result: Path) -> None:
    from machine import describe_machine, library_versions

    cuda = torch.cuda.is_available()
    facts = {
        "machine": describe_machine(),
        "versions": library_versions(),
        "cuda_available": cuda,
        "cuda_runtime": torch.version.cuda,
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "cuda_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "torch_threads": torch.get_num_threads(),
    }
    _write_json(result, facts)
    print(json.dumps(facts))


# --- generated checkpoints ----------------------------------------------------------------------


def heavy_tailed_matrix(rows: int, cols: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise plus a low-rank part whose Gram eigenvalues follow a power law, as bf16.

    The noise alone has a Marchenko-Pastur spectrum (no tail, an unstable alpha fit); the
    `rank` planted eigenvalues lambda_k = edge * (rank / k) ** (1 / (alpha - 1)), k = 1..rank,
    are a sample of a density ~ lambda^-alpha above the bulk edge, like a trained layer's tail.
    """
    side = min(rows, cols)
    rank = max(4, side // 16)
    noise = torch.randn(rows, cols, generator=generator) * INIT_STD
    edge = INIT_STD**2 * (rows**0.5 + cols**0.5) ** 2  # the noise Gram's largest eigenvalue
    order = torch.arange(1, rank + 1, dtype=torch.float32)
    singular = (edge * (rank / order) ** (1.0 / (alpha - 1.0))).sqrt()
    left = torch.linalg.qr(torch.randn(rows, rank, generator=generator))[0]
    right = torch.linalg.qr(torch.randn(cols, rank, generator=generator))[0]
    return (noise + (left * singular) @ right.T).to(torch.bfloat16)


def llama_shaped(directory: Path, hidden: int, intermediate: int, layers: int) -> None:
    """A directory of safetensors shards, one per block: q/k/v/o hidden x hidden, gate/up
    intermediate x hidden, down hidden x intermediate (LLaMA's layout, no embeddings or norms).

    The index is written last: a directory that has one is complete and is reused as is.
    """
    index_path = directory / "model.safetensors.index.json"
    if index_path.is_file():
        print(f"reusing {directory}")
        return
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED)
    shapes = {
        "self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
        "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden),
        "mlp.down_proj": (hidden, intermediate),
    }
    weight_map, total = {}, 0
    count = 0
    for layer in range(layers):
        shard = f"model-{layer + 1:05d}-of-{layers:05d}.safetensors"
        tensors = {}
        for projection in PROJECTIONS:
            alpha = PLANTED_ALPHAS[count % len(PLANTED_ALPHAS)]
            count += 1
            tensors[f"model.layers.{layer}.{projection}.weight"] = heavy_tailed_matrix(*shapes[projection], alpha, generator)
        save_file(tensors, directory / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shard))
        total += sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        del tensors  # one block in memory at a time
    _write_json(index_path, {"metadata": {"total_size": total}, "weight_map": weight_map})
    print(f"wrote {directory}: {layers} blocks, {count} matrices, {total / 2**20:.0f} MiB")


def language_model(directory: Path) -> None:
    """The tiny LLaMA causal LM of the tests, its tokenizer, and a calibration text beside it."""
    from fixtures.language_models import tiny_text, write_tiny_language_model

    write_tiny_language_model(directory / "llama", "llama")
    (directory / "calibration.txt").write_text(tiny_text(2000))
    print(f"wrote {directory / 'llama'} and {directory / 'calibration.txt'}")


# --- profile ------------------------------------------------------------------------------------


def profile(checkpoint: str, device: str, report: Path, result: Path) -> None:
    """`htsr analyze CHECKPOINT --device DEVICE --profile -f json -o REPORT` in this process, then
    the device's peak allocation written to RESULT, and the command's stderr (with the profile
    line) beside it as RESULT with the suffix .stderr.

    The command runs in-process so that torch.cuda.max_memory_allocated sees its allocations;
    nothing else is imported, so the process's peak RSS (measured by the caller) is the command's.
    """
    from htsr_cli.cli import main

    captured = result.with_suffix(".stderr")
    captured.parent.mkdir(parents=True, exist_ok=True)
    saved_stderr = os.dup(2)
    sys.argv = ["htsr", "analyze", checkpoint, "--device", device, "--profile", "-f", "json", "-o", str(report), "--quiet"]
    os.environ["COLUMNS"] = "400"  # one profile line: rich wraps at 80 columns off a terminal
    started = time.perf_counter()
    with captured.open("w") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
    facts = {"exit_code": code, "command_s": time.perf_counter() - started}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        facts["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        facts["gpu_max_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    _write_json(result, facts)
    sys.stderr.write(captured.read_text())
    sys.exit(code)


def _timed(device: torch.device, work) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    value = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, value


def stage_split(checkpoint: Path, device: str, repeats: int, result: Path) -> None:
    """Seconds of host-to-device copy, Gram and eigensolve for one matrix of each shape of a
    generated checkpoint, as htsr's solver does them (default precision), median of `repeats`
    after one untimed warm-up; `--profile`'s solve stage is Gram and eigensolve together."""
    from htsr_cli.spectra.solver import Eigensolver

    solver = Eigensolver.create(device)
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    first_of_shape: dict[tuple, tuple[str, str]] = {}
    counts: dict[tuple, int] = {}
    for key, shard in index["weight_map"].items():
        with safe_open(checkpoint / shard, framework="pt") as reader:
            shape = tuple(reader.get_slice(key).get_shape())
        first_of_shape.setdefault(shape, (key, shard))
        counts[shape] = counts.get(shape, 0) + 1
    shapes = []
    for shape, (key, shard) in first_of_shape.items():
        with safe_open(checkpoint / shard, framework="pt") as reader:
            weight = reader.get_tensor(key)
        times = {"transfer": [], "gram": [], "eigensolve": []}
        for attempt in range(repeats + 1):
            transfer_s, moved = _timed(solver.device, lambda: solver.transfer(weight))
            gram_s, grams = _timed(solver.device, lambda: solver.gram(moved[None]))
            eigensolve_s, _ = _timed(solver.device, lambda: solver.eigenvalues(grams))
            if attempt:  # the first pass pays for cuBLAS/cuSOLVER handles and workspaces
                for stage, seconds in zip(times, (transfer_s, gram_s, eigensolve_s)):
                    times[stage].append(seconds)
            del moved, grams
        median = {stage: statistics.median(values) for stage, values in times.items()}
        shapes.append({"shape": list(shape), "dtype": str(weight.dtype).removeprefix("torch."), "matrices": counts[shape],
                       **{f"{stage}_s": seconds for stage, seconds in median.items()}})
    totals = {f"{stage}_s": sum(entry[f"{stage}_s"] * entry["matrices"] for entry in shapes)
              for stage in ("transfer", "gram", "eigensolve")}
    facts = {"device": str(solver.device), "precision": solver.precision.mode, "repeats": repeats,
             "shapes": shapes, "checkpoint_totals": totals}
    _write_json(result, facts)
    print(json.dumps(totals))


def mask_agreement(first: Path, second: Path, result: Path) -> None:
    """How many weights of the pruned matrices are zero in both `htsr prune` outputs or in neither."""
    record = json.loads((first / "htsr-prune.json").read_text())
    pruned = {layer["tensor"] for layer in record["layers"] if layer["pruned"]}
    same = total = 0
    matrices = []
    for shard in sorted(first.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as mine, safe_open(second / shard.name, framework="pt") as theirs:
            for key in sorted(pruned & set(mine.keys())):
                agree = int(((mine.get_tensor(key) == 0) == (theirs.get_tensor(key) == 0)).sum())
                size = mine.get_slice(key).get_shape()
                count = size[0] * size[1]
                same, total = same + agree, total + count
                if agree != count:
                    matrices.append({"tensor": key, "differing": count - agree})
    facts = {"weights": total, "same": same, "fraction_same": same / total if total else None,
             "matrices_differing": matrices[:20]}
    _write_json(result, facts)
    print(json.dumps(facts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("environment")
    command.add_argument("result", type=Path)
    command = commands.add_parser("llama-shaped")
    command.add_argument("directory", type=Path)
    command.add_argument("--hidden", type=int, required=True)
    command.add_argument("--intermediate", type=int, required=True)
    command.add_argument("--layers", type=int, required=True)
    command = commands.add_parser("language-model")
    command.add_argument("directory", type=Path)
    command = commands.add_parser("profile")
    command.add_argument("checkpoint")
    command.add_argument("--device", required=True)
    command.add_argument("--report", type=Path, required=True)
    command.add_argument("--result", type=Path, required=True)
    command = commands.add_parser("stage-split")
    command.add_argument("checkpoint", type=Path)
    command.add_argument("--device", required=True)
    command.add_argument("--repeats", type=int, default=3)
    command.add_argument("--result", type=Path, required=True)
    command = commands.add_parser("masks")
    command.add_argument("first", type=Path)
    command.add_argument("second", type=Path)
    command.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "environment":
        environment(args.result)
    elif args.command == "llama-shaped":
        llama_shaped(args.directory, args.hidden, args.intermediate, args.layers)
    elif args.command == "language-model":
        language_model(args.directory)
    elif args.command == "profile":
        profile(args.checkpoint, args.device, args.report, args.result)
    elif args.command == "stage-split":
        stage_split(args.checkpoint, args.device, args.repeats, args.result)
    else:
        mask_agreement(args.first, args.second, args.result)


if __name__ == "__main__":
    main()
