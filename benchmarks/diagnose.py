"""The MD tree paper's diagnosis-accuracy protocol on the public Model Diagnosis Dataset (`make bench-diagnose`).

    python benchmarks/diagnose.py                          # ../shared/data/md-tree beside the project
    python benchmarks/diagnose.py --data-dir DIR --write-tree

Fits every method on the basic collection's rows each case allows and
diagnoses the whole noisy collection (htsr_cli.diagnosis.evaluation), five
seeds like the paper; also the shipped tree (fitted on every labelled basic
row) on the noisy collection. Writes the raw numbers to
benchmarks/results/diagnose/<machine>.json and the `bench-diagnose` section of
BENCHMARKS.md. --write-tree refits the shipped thresholds
(htsr_cli/diagnosis/md_tree.json). Deterministic; a second or so on a CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.append(str(ROOT))

from machine import result_header  # noqa: E402
from sections import with_section  # noqa: E402

from htsr_cli.diagnosis.evaluation import BASELINES, CASES, SEEDS, evaluate_case, question_rows  # noqa: E402
from htsr_cli.diagnosis.fit import every_split  # noqa: E402
from htsr_cli.diagnosis.md_tree import SHIPPED, FitSettings, fit_population  # noqa: E402
from htsr_cli.diagnosis.table import read_population  # noqa: E402
from htsr_cli.diagnosis.tree import predict  # noqa: E402
from htsr_cli.io import write_atomic  # noqa: E402
from htsr_cli.results.documents import dumps_json  # noqa: E402

BASIC, NOISY = "dataframe_normal_public.csv", "dataframe_noise_public.csv"
SHIPPED_PROTOCOL = (
    "MD tree thresholds fitted on every labelled row of the basic collection (clean labels; rows labelled "
    "'optimal' dropped; data vs temperature at width >= 32), each threshold in the paper's order and "
    "interval (benchmarks/diagnose.py --write-tree)"
)
NAMES = {
    "md_tree": "MD tree (htsr)",
    "md_tree_brent": "MD tree (paper's search)",
    "validation_dt": "Validation + DT",
    "hyperparameter_dt": "Hyperparameter + DT",
    "landscape_dt": "MD-tree features + DT",
}


METHODS = ("md_tree", "md_tree_brent", *BASELINES)


def brent_search(accuracy, rule, values) -> float:
    """The paper's threshold search: SciPy's bounded Brent minimisation of minus the training accuracy."""
    from scipy.optimize import minimize_scalar

    return float(minimize_scalar(lambda threshold: -accuracy(threshold), method="bounded", bounds=(rule.low, rule.high)).x)


SEARCHES = {"md_tree": every_split, "md_tree_brent": brent_search}


def shipped_accuracy(tree, noisy) -> dict[str, float]:
    """The shipped tree's accuracy (%) on the noisy collection, per question."""
    out = {}
    for fitted in tree.questions:
        rows = question_rows(noisy, fitted.question)
        out[fitted.question.name] = 100.0 * float((predict(fitted.root, rows.columns) == rows.labels).mean())
    return out


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        "## Diagnosis accuracy: the MD tree on the Model Diagnosis Dataset (`make bench-diagnose`)",
        "",
        "The MD tree paper's protocol (Zhou et al., ICML 2024; YefanZhou/ModelDiagnosis `benchmark/README.md`, "
        "Table B): each method learns from the rows of the basic collection (clean labels) that the case allows, "
        "then diagnoses every labelled configuration of the noisy collection (10% label noise). Mean accuracy (%) "
        f"over seeds {', '.join(map(str, SEEDS))} (the paper's; the same training rows as its runs), spread = "
        "standard deviation; scale-transfer cases have one training set. The paper's numbers are in brackets. "
        "DT = a depth-4 CART tree (Gini): on the validation metrics (train/test error and loss: "
        "validation-based diagnosis), on the hyperparameters (log data amount and/or log parameter count), "
        "and on the MD tree's own features (train error, mode-connectivity peak, Hessian trace).",
        "",
        "| case | train rows | " + " | ".join(NAMES[method] for method in METHODS) + " |",
        "|---|---:|" + "---:|" * len(METHODS),
    ]
    for case in result["cases"]:
        cells = []
        for method in METHODS:
            outcome = case["methods"][method]
            cell = f"{outcome['mean']:.2f}"
            if outcome["spread"]:
                cell += f" ± {outcome['spread']:.2f}"
            paper = case["paper"].get("md_tree" if method == "md_tree_brent" else method)
            if paper is not None and method != "md_tree":
                cell += f" [{paper:.2f}]"
            cells.append(cell)
        rows = sorted(set(case["train_rows"]))
        lines.append(f"| {case['name']} | {'/'.join(map(str, rows))} | " + " | ".join(cells) + " |")
    shipped = result["shipped"]
    first = {method: result["cases"][0]["methods"][method]["mean"] for method in METHODS}
    means = {method: sum(case["methods"][method]["mean"] for case in result["cases"]) / len(result["cases"])
             for method in METHODS}
    lines += [
        "",
        "The paper's headline, case 1 (87.7%, 14.88 points above validation-based diagnosis): "
        f"{first['md_tree_brent']:.2f}% and {first['md_tree_brent'] - first['validation_dt']:.2f} points with the "
        f"paper's search, {first['md_tree']:.2f}% and {first['md_tree'] - first['validation_dt']:.2f} points with "
        "htsr's. Mean over the rows above: "
        + ", ".join(f"{NAMES[method]} {means[method]:.2f}" for method in METHODS) + ". "
        "The MD tree has depth 2-3 and a fixed shape; the depth-4 tree on its features is the plain, deeper "
        "decision tree on the same features.",
        "",
        "The shipped tree (`htsr_cli/diagnosis/md_tree.json`, fitted on every labelled basic row) on the noisy "
        "collection: " + ", ".join(f"{name} {value:.2f}%" for name, value in shipped.items()) + ".",
        "",
        "Where this differs from the paper, and why. *MD tree (paper's search)* fits the thresholds exactly as "
        "the paper's code does (one at a time in its order, each by SciPy's bounded Brent minimisation of minus "
        "the training accuracy inside the paper's interval) and reproduces its MD tree numbers to 0.01 point: "
        "the cases, training rows and test rows are the paper's. *MD tree (htsr)* is what htsr ships: the same "
        "shape, order and intervals, but each threshold is the best of every distinct split of the training "
        "rows (ties: nearest the paper's starting value). Accuracy is a step function of a threshold, so Brent's "
        "search stops at a local optimum; htsr's fit is higher on the training rows in every case, which on the "
        "noisy test set gains up to 14 points (data <= 5K) and loses up to 2.6 (width 2). The CART baselines "
        "(htsr's own numpy CART) have the same training accuracy as scikit-learn's DecisionTreeClassifier in "
        "every case; on the test set they differ where several splits are equally good on the training rows: "
        "scikit-learn picks among them by a seeded random feature order (ours: the first feature), and its "
        "choice changes between its versions too (scikit-learn 1.9.1 gives 67.95 and 65.74 for the two "
        "scale-transfer validation baselines where the paper has 67.55 and 63.61). The data-vs-temperature "
        "row follows the paper's script (`scripts/q2_predict_data_temp.sh`: one random width >= 32); Table B "
        "has no number for it.",
        "",
        f"Command: `{result['command']}`. Machine: {machine['cpu']}, {machine['cores']} cores; "
        f"htsr {result['versions']['htsr']}, Python {result['versions']['python']}; {result['date']}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "md-tree")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results" / "diagnose")
    parser.add_argument("--write-tree", action="store_true", help="refit htsr_cli/diagnosis/md_tree.json")
    args = parser.parse_args()
    basic = read_population(args.data_dir / BASIC)
    noisy = read_population(args.data_dir / NOISY)
    result = result_header("htsr.bench.diagnose/1", "bench-diagnose", "diagnose.py")
    result["cases"] = []
    for case in CASES:
        outcomes = evaluate_case(case, basic, noisy, searches=SEARCHES)
        result["cases"].append({
            "name": case.name,
            "question": case.question.name,
            "sampling": case.sampling,
            "k": case.k,
            "paper": dict(case.paper),
            "train_rows": list(outcomes[0].train_rows),
            "methods": {
                outcome.method: {"accuracies": list(outcome.accuracies), "mean": outcome.mean, "spread": outcome.spread}
                for outcome in outcomes
            },
        })
    tree = fit_population(basic, FitSettings(), SHIPPED_PROTOCOL)
    result["shipped"] = shipped_accuracy(tree, noisy)
    if args.write_tree:
        write_atomic(SHIPPED, dumps_json(tree.to_json()))
        print(f"wrote {SHIPPED}", file=sys.stderr)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(args.results_dir / f"{result['machine']['slug']}.json", dumps_json(result))
    previous = args.out.read_text() if args.out.is_file() else ""
    write_atomic(args.out, with_section(previous, "bench-diagnose", markdown(result)))
    print(markdown(result))


if __name__ == "__main__":
    main()
