"""`make bench-noise`: how far a float32 eigensolver really is from float64, against the guard's model.

    python benchmarks/float32_noise.py            # fixtures, MiniLM and the LLaMA-shaped directory when present
    python benchmarks/float32_noise.py --no-synthetic --checkpoint PATH

For every weight matrix: its Gram in float32 (as `--precision float32` forms it),
then the eigenvalues of that same Gram from a float32 and from a float64
eigensolver. The table gives, per checkpoint and Gram side n,

- the worst eigenvalue error in units of eps32 x lambda_max, next to the guard's
  noise model 0.1 x max(n, 128) (htsr_cli.spectra.fit.FLOAT32_NOISE, FLOAT32_NOISE_MIN_SIDE);
- how many layers the guard redoes (its bound above 1e-3, or no fit), how many
  float32 alone really got wrong (|alpha difference| above 1e-3, or a fit in one
  solve only), and how many of those the guard missed (it must be none);
- how many times float32 alone chose another KS xmin than float64 did, and on
  how many layers the guard's noise could switch xmin at all: a candidate whose
  KS distance, lowered by its worst first-order change under that noise, reaches
  the winner's raised the same way, with an alpha more than 1e-3 away. The
  guard's bound holds xmin fixed, so this is what it leaves uncovered.

Synthetic rows: Gaussian matrices and planted power laws (alpha 2, 4, 8) of
several shapes, seeded. Raw numbers go to benchmarks/results/float32-noise/<machine>.json,
the table to the `bench-float32-noise` section of BENCHMARKS.md. Times nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.append(str(ROOT))

from checkpoints import minilm_directory  # noqa: E402
from machine import result_header  # noqa: E402
from sections import with_section  # noqa: E402
from weights import weight_matrices  # noqa: E402

from htsr_cli.spectra.fit import (  # noqa: E402
    EXACT_SCAN_LIMIT,
    FLOAT32_ALPHA_TOLERANCE,
    FLOAT32_NOISE,
    FLOAT32_NOISE_MIN_SIDE,
    KS_MIN_EIGENVALUE,
    fit_power_law,
    float32_alpha_error,
    hill_alphas,
    ks_distances,
)
from htsr_cli.io import write_atomic  # noqa: E402
from htsr_cli.render.outputs import markdown_text  # noqa: E402
from htsr_cli.results.documents import dumps_json  # noqa: E402
from htsr_cli.spectra.solver import Eigensolver, SolverPrecision  # noqa: E402

SECTION = "bench-float32-noise"
LLAMA_DIRECTORY = HERE / "work" / "llama-h2048-i5632-L4-v32000-bf16"
SYNTHETIC_SHAPES = ((512, 384), (1536, 384), (1000, 1000), (4096, 1024), (2048, 2048), (5632, 2048))
PLANTED_ALPHAS = (2.0, 4.0, 8.0)
EPS32 = torch.finfo(torch.float32).eps


def compare_solvers(weight: torch.Tensor, xmin: str = "ks") -> dict:
    """One matrix: the float32 and float64 eigensolvers on its float32 Gram, and what the guard makes of it."""
    solver = Eigensolver(torch.device("cpu"), SolverPrecision("float32"), 1)
    grams = solver.gram(weight[None] if weight.dim() == 2 else weight)
    side = grams.shape[-1]
    single = torch.sort(solver.eigenvalues(grams).flatten()).values
    double = torch.sort(solver.eigenvalues(grams, float64=True).flatten()).values
    lambda_max = float(double[-1])
    worst = float((single - double).abs().max()) / (EPS32 * lambda_max) if lambda_max > 0 else 0.0
    fit_single, fit_double = fit_power_law(single, xmin), fit_power_law(double, xmin)
    switch_possible = xmin_switch_possible(single, side) if xmin == "ks" else None
    if fit_single is None or fit_double is None:
        difference, bound, xmin_moved = None, None, None
        needed = (fit_single is None) != (fit_double is None)
        redone = fit_single is None and lambda_max > 0
    else:
        difference = abs(fit_single.alpha - fit_double.alpha)
        bound = float32_alpha_error(single, fit_single, side)
        needed = difference > FLOAT32_ALPHA_TOLERANCE
        redone = bound > FLOAT32_ALPHA_TOLERANCE
        xmin_moved = fit_single.tail_size != fit_double.tail_size
    return {
        "side": side,
        "error_in_eps_lambda_max": worst,
        "alpha_difference": difference,
        "predicted": bound,
        "redone": redone,
        "needed": needed,
        "xmin_moved": xmin_moved,
        "xmin_switch_possible": switch_possible,
    }


def xmin_switch_possible(x: torch.Tensor, side: int) -> bool | None:
    """Whether float32 noise of the guard's model could make `fit_ks` pick another xmin, alpha > 1e-3 away.

    Every sorted eigenvalue moves by at most noise (Weyl), so candidate j's Hill
    alpha moves by at most d_alpha_j (the guard's bound at xmin_j) and its KS
    distance D_j = max |k/t - (1 - (x/xmin_j)^(1 - alpha_j))| by at most
    2 (alpha_j - 1) noise / xmin_j + d_alpha_j / (e (alpha_j - 1)) (first order:
    the model CDF's slopes in x and xmin are at most (alpha - 1) / xmin, in alpha
    at most 1 / (e (alpha - 1))). A switch is possible when some candidate's
    lowest D reaches the winner's highest. None when `ks` scores a grid (above
    EXACT_SCAN_LIMIT eigenvalues) or finds no fit.
    """
    x = x[x > KS_MIN_EIGENVALUE].double()
    count = x.numel()
    if count < 3 or count > EXACT_SCAN_LIMIT:
        return None
    starts = torch.arange(0, count - 1)
    alphas = hill_alphas(x, starts)
    valid = torch.isfinite(alphas) & (alphas > 1.0)
    if not bool(valid.any()):
        return None
    distances = torch.where(valid, ks_distances(x, starts, alphas), torch.full_like(alphas, math.inf))
    noise = FLOAT32_NOISE * max(side, FLOAT32_NOISE_MIN_SIDE) * float(EPS32) * float(x[-1])
    tail_sizes = (count - starts).double()
    mean_inverse = torch.flip(torch.cumsum(torch.flip(1.0 / x, (0,)), 0), (0,))[:-1] / tail_sizes
    xmins = x[:-1]
    slack = (alphas - 1.0).clamp(min=1e-12)
    alpha_moves = slack**2 * noise * (mean_inverse + 1.0 / xmins)
    distance_moves = 2.0 * slack * noise / xmins + alpha_moves / (math.e * slack)
    best = int(torch.argmin(distances))
    reachable = valid & (distances - distance_moves <= distances[best] + distance_moves[best])
    reachable[best] = False
    apart = (alphas - alphas[best]).abs() + alpha_moves + alpha_moves[best] > FLOAT32_ALPHA_TOLERANCE
    return bool((reachable & apart).any())


def synthetic_matrices(seed: int = 0):
    """(group, name, matrix): Gaussian matrices and planted power laws U diag(sqrt(lambda)) V^T."""
    generator = torch.Generator().manual_seed(seed)
    for rows, cols in SYNTHETIC_SHAPES:
        yield "Gaussian", f"{rows}x{cols}", torch.randn(rows, cols, generator=generator)
        side = min(rows, cols)
        for alpha in PLANTED_ALPHAS:
            left, _ = torch.linalg.qr(torch.randn(rows, side, generator=generator, dtype=torch.float64))
            right, _ = torch.linalg.qr(torch.randn(cols, side, generator=generator, dtype=torch.float64))
            eigenvalues = torch.rand(side, generator=generator, dtype=torch.float64) ** (-1.0 / (alpha - 1.0))
            matrix = (left * eigenvalues.sqrt()) @ right.T
            yield f"planted alpha {alpha:g}", f"{rows}x{cols}", matrix.float()


def checkpoint_label(path: Path) -> str:
    """How the table names a checkpoint: MiniLM by its model name (its directory is just `model`)."""
    return "all-MiniLM-L6-v2" if path == minilm_directory() else path.name


def checkpoint_matrices(path: Path):
    for key, weight in weight_matrices(path):
        yield checkpoint_label(path), key, weight


def summarize(records: list[dict]) -> list[dict]:
    """Per (group, side): matrices, the worst error, the model's noise, redone/needed/missed counts."""
    by_group: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for record in records:
        by_group[(record["group"], record["side"])].append(record)
    rows = []
    for (group, side), members in sorted(by_group.items(), key=lambda item: (_first(records, item[0][0]), item[0][1])):
        rows.append({
            "group": group,
            "side": side,
            "matrices": len(members),
            "worst_error": max(member["error_in_eps_lambda_max"] for member in members),
            "model_noise": FLOAT32_NOISE * max(side, FLOAT32_NOISE_MIN_SIDE),
            "redone": sum(member["redone"] for member in members),
            "needed": sum(member["needed"] for member in members),
            "missed": sum(member["needed"] and not member["redone"] for member in members),
            "xmin_moved": sum(bool(member.get("xmin_moved")) for member in members),
            "xmin_switch_possible": sum(bool(member.get("xmin_switch_possible")) for member in members),
        })
    return rows


def _first(records: list[dict], group: str) -> int:
    return next(index for index, record in enumerate(records) if record["group"] == group)


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        "## float32 eigensolver noise and the guard",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; {result['date']}; command `{result['command']}`.",
        "",
        "Each matrix's float32 Gram solved by a float32 and a float64 eigensolver. *worst error* is the",
        "largest eigenvalue difference in units of eps32 x lambda_max; the guard's model is",
        f"{FLOAT32_NOISE:g} x max(n, {FLOAT32_NOISE_MIN_SIDE}). *redone*: the guard's bound on |alpha difference|",
        f"is above {FLOAT32_ALPHA_TOLERANCE:g}; *needed*: float32 alone really moved alpha by more than that;",
        "*missed*: needed but not redone (must be 0). *xmin moved*: float32 alone chose another KS xmin",
        "than float64. *switch possible*: the guard's noise could, to first order, let another KS candidate",
        "with an alpha more than 0.001 away win (the bound holds xmin fixed, so it does not cover these).",
        "",
        "| matrices from | n | matrices | worst error | model | redone | needed | missed | xmin moved | switch possible |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {markdown_text(row['group'])} | {row['side']} | {row['matrices']} | {row['worst_error']:.1f} | "
            f"{row['model_noise']:.1f} | {row['redone']} | {row['needed']} | {row['missed']} | "
            f"{row['xmin_moved']} | {row['xmin_switch_possible']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, action="append", default=None, help="instead of the defaults")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results" / "float32-noise")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.checkpoint is None:
        args.checkpoint = [path for path in (ROOT / "fixtures" / "tiny-llama", minilm_directory(), LLAMA_DIRECTORY)
                           if path is not None and path.exists()]
    sources = [checkpoint_matrices(path) for path in args.checkpoint]
    if not args.no_synthetic:
        sources.append(synthetic_matrices())
    records = []
    for source in sources:
        for group, name, weight in source:
            records.append({"group": group, "name": name, **compare_solvers(weight)})
            print(f"{group} {name}: {records[-1]}", file=sys.stderr, flush=True)
    result = {
        **result_header("htsr.bench-float32-noise/1", "bench-noise", "float32_noise.py"),
        "records": records,
        "summary": summarize(records),
    }
    path = args.results_dir / f"{result['machine']['slug']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, dumps_json(result))
    previous = args.out.read_text() if args.out.is_file() else "# htsr benchmarks\n"
    write_atomic(args.out, with_section(previous, SECTION, markdown(result)))
    print(f"wrote {args.out} and {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
