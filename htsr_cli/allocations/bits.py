"""Alpha-guided mixed precision: bits per layer from alpha (algorithms.md section 14).

Better-trained layers (smaller alpha) get more bits, the direction AlphaPruning's
authors used in their mixed-precision experiment; the parameter-weighted mean
width never exceeds the budget and comes as close to it as the choices allow.
`bits_allocation` is the exact solver (a knapsack over parameter-weighted bits,
solved by dynamic programming); `bits_plan` turns a report into `htsr.bits/1`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from htsr_cli.allocations.scores import check_metric, missing_score_note, score_of
from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.results.report import LayerResult, Report

SCHEMA = "htsr.bits/1"
UNITS = ("layer", "block")
MAX_BITS = 16
ALLOCATED_KINDS = ("linear", "conv1d", "conv2d")
HELD_KINDS = ("linear", "conv1d", "conv2d", "embedding")  # what --embedding-bits may hold outside the blocks
# vLLM serves these projections as one fused matrix, which takes one quantization scheme:
# with --unit layer they share one width (their score is their mean alpha).
FUSED = ((("q_proj", "k_proj", "v_proj"), "qkv_proj"), (("gate_proj", "up_proj"), "gate_up_proj"))
# The dynamic program's table (states x units, one byte each) stays under this many entries;
# beyond it the parameter counts are rounded up to a coarser unit (see `bits_allocation`).
TABLE_LIMIT = 1 << 26


@dataclass(frozen=True)
class BitsSettings:
    """What `htsr allocate bits` decides: widths from `choices` averaging at most `average` bits.

    `spread` is the half-width, in bits, of the allocation before rounding to the
    choices (the best-trained unit's ideal width is `spread` above the middle, the
    worst `spread` below). `group_size` is recorded for the exports and `htsr quantize`
    (0: one scale per output row). `embedding_bits` holds the matrices outside the
    blocks (embeddings, output head) at that width, `edge_bits` the first and last
    block; both count toward the average. None leaves the former unquantized and
    allocates the latter like the rest.
    """

    average: float
    choices: tuple[int, ...] = (2, 3, 4, 8)
    unit: str = "layer"
    metric: str = "alpha"  # or "alpha_farms"
    spread: float = 1.0
    group_size: int = 128
    embedding_bits: int | None = None
    edge_bits: int | None = None

    def __post_init__(self) -> None:
        choices = tuple(self.choices)
        if not choices or not all(_is_width(choice) for choice in choices):
            raise InvalidSetting("choices", _listed(choices), f"must be whole numbers of bits in 1..{MAX_BITS}")
        object.__setattr__(self, "choices", tuple(sorted(set(choices))))
        low, high = self.choices[0], self.choices[-1]
        if isinstance(self.average, bool) or not isinstance(self.average, (int, float)) or not low <= self.average <= high:
            raise InvalidSetting(
                "average", self.average, f"must lie within the choices' range [{low}, {high}] (choices {_listed(self.choices)})"
            )
        if self.unit not in UNITS:
            raise InvalidSetting("unit", self.unit, f"must be one of {', '.join(UNITS)}")
        check_metric(self.metric)
        if not 0.0 < self.spread <= MAX_BITS:
            raise InvalidSetting("spread", self.spread, f"must be a number of bits in (0, {MAX_BITS}]")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 0:
            raise InvalidSetting("group_size", self.group_size, "must be a whole number of columns, 0 for one scale per row")
        for name in ("embedding_bits", "edge_bits"):
            value = getattr(self, name)
            if value is not None and not _is_width(value):
                raise InvalidSetting(name, value, f"must be a whole number of bits in 1..{MAX_BITS}")


def _is_width(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_BITS


def _listed(choices: Sequence[object]) -> str:
    return ",".join(str(choice) for choice in choices)


@dataclass(frozen=True)
class Allocation:
    """The solver's answer: the chosen width of each unit, and whether it is exactly optimal."""

    bits: list[int]
    exact: bool  # False when parameter counts were rounded up to `cost_unit` to keep the table small
    cost_unit: int  # parameter-bits per dynamic-programming state


def bits_allocation(
    sizes: Sequence[int],
    options: Sequence[Sequence[int]],
    distortions: Sequence[Sequence[float]],
    capacity: Fraction,
    table_limit: int = TABLE_LIMIT,
) -> Allocation:
    """Widths b_i from options[i] that solve, in this order of priority,

        1. maximize  sum_i sizes[i] * b_i   subject to  sum_i sizes[i] * b_i <= capacity
        2. minimize  sum_i distortions[i][chosen index]

    exactly, by dynamic programming over the parameter-bits above the smallest
    options (a multiple-choice knapsack). States count parameter-bits in units of
    g, the greatest common divisor of every option's extra cost sizes[i] * (b - b_min,i),
    so the table has floor((capacity - base) / g) + 1 states per unit; transformer
    matrices share large factors (2^20 for LLaMA-7B) and it stays small. Should it
    pass `table_limit` entries, costs are rounded up to a multiple of g and the
    result, still within the capacity, is optimal for the rounded costs only (`exact` False).
    Raises ValueError when even the smallest options exceed the capacity.
    """
    if not sizes or not (len(sizes) == len(options) == len(distortions)):
        raise ValueError("need options and distortions for every unit, and at least one unit")
    base = sum(size * min(choices) for size, choices in zip(sizes, options))
    slack = capacity - base
    if slack < 0:
        raise ValueError("the smallest options already exceed the capacity")
    extra = [[size * (b - min(choices)) for b in choices] for size, choices in zip(sizes, options)]
    unit = math.gcd(*(cost for costs in extra for cost in costs)) or 1
    reachable = sum(max(costs) for costs in extra) // unit
    states = min(math.floor(slack / unit), reachable)
    exact = True
    if (states + 1) * len(sizes) > table_limit:
        factor = math.ceil((states + 1) * len(sizes) / table_limit)
        unit *= factor
        states = min(math.floor(slack / unit), sum(-(-max(costs) // unit) for costs in extra))
        exact = False
    return _solve(extra, distortions, unit, states, options, exact)


def _solve(extra, distortions, unit: int, states: int, options, exact: bool) -> Allocation:
    import numpy as np  # here, not at the top: `htsr --help` imports this module

    best = np.full(states + 1, np.inf)  # best[s]: least distortion of the units so far at exactly s states
    best[0] = 0.0
    picks = np.zeros((len(extra), states + 1), dtype=np.uint8)
    for index, (costs, values) in enumerate(zip(extra, distortions)):
        merged = np.full(states + 1, np.inf)
        for choice, (cost, value) in enumerate(zip(costs, values)):
            step = -(-cost // unit)  # exact when unit divides every cost, rounded up otherwise
            if step > states:
                continue
            candidate = best[: states + 1 - step] + value
            better = candidate < merged[step:]  # strict: on a tie the smaller width (listed first) stays
            merged[step:][better] = candidate[better]
            picks[index, step:][better] = choice
        best = merged
    state = int(np.flatnonzero(np.isfinite(best)).max())  # the most bits the capacity allows
    chosen = []
    for index in range(len(extra) - 1, -1, -1):
        choice = int(picks[index, state])
        chosen.append(options[index][choice])
        state -= -(-extra[index][choice] // unit)
    return Allocation(chosen[::-1], exact, unit)


def alpha_distortions(scores: Sequence[float], sizes: Sequence[int], options: Sequence[Sequence[int]], spread: float) -> list[list[float]]:
    """The alpha objective's terms d_i(b) = N_i * 4^(a_i - b), a_i = spread * (1 - 2 t_i).

    t_i = (s_i - s_min) / (s_max - s_min) is the unit's score on [0, 1] (0.5 for
    all when every score is equal). 4^-b is the error power of a uniform quantizer
    of b bits; the weight 4^a_i makes better-trained units (small alpha) costlier to
    quantize coarsely. Without the choices' rounding the minimum is b_i = B + a_i - mean(a).
    """
    low, high = min(scores), max(scores)
    positions = [0.5] * len(scores) if high == low else [(s - low) / (high - low) for s in scores]
    return [
        [size * 4.0 ** (spread * (1.0 - 2.0 * t) - b) for b in choices]
        for t, size, choices in zip(positions, sizes, options)
    ]


_FLOAT_WIDTHS = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16}
_INT_WIDTH = re.compile(r"\bint(\d+)\b")
_GGUF_WIDTH = re.compile(r"\bgguf (?:I?Q|TQ)(\d)_")
_GGUF_FLOATS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16}


def stored_bits(storage: str | None) -> int | None:
    """Nominal bits per weight of how a layer is stored (its report `storage`), None if unknown.

    Float dtypes give their width; quantized formats the width of their codes
    ("gptq int4 g128" 4, "gguf Q4_K" 4, "fp8-e4m3 ..." 8, "bnb nf4" 4, "mxfp4" 4).
    """
    if storage is None:
        return None
    label = storage.removeprefix("weight_norm ")
    if label in _FLOAT_WIDTHS:
        return _FLOAT_WIDTHS[label]
    if (match := _INT_WIDTH.search(label)) is not None:
        return int(match.group(1))
    if (match := _GGUF_WIDTH.search(label)) is not None:
        return int(match.group(1))
    if label.startswith("gguf ") and label[5:] in _GGUF_FLOATS:
        return _GGUF_FLOATS[label[5:]]
    if label.startswith("fp8"):
        return 8
    if label in ("mxfp4", "bnb nf4", "bnb fp4") or label.startswith(("bnb nf4 ", "bnb fp4 ")):
        return 4
    return None


def fused_unit(name: str) -> str:
    """The unit a matrix shares its width with under --unit layer: its fused projection, or itself."""
    parent, _, leaf = name.rpartition(".")
    for members, fused in FUSED:
        if leaf in members:
            return f"{parent}.{fused}" if parent else fused
    return name


def bits_plan(report: Report, settings: BitsSettings, model_type: str | None = None) -> dict[str, Any]:
    """The `htsr.bits/1` document: one entry per weight matrix of the report.

    Scope as in AlphaPruning: linear and conv matrices in numbered blocks (every
    matrix but the first and last when there is no block). In scope and scored:
    allocated, one width per unit (a fused projection or a matrix with --unit layer,
    a block with --unit block; the unit's score is its members' plain mean).
    Held (bits fixed): the first and last block with `edge_bits`, the matrices
    outside the blocks with `embedding_bits`. Everything else: `bits: null` and a note.
    `model_type` (config.json) names the architecture for the llama.cpp export.
    """
    metric = settings.metric
    any_blocks = any(layer.block is not None for layer in report.layers if layer.kind in ALLOCATED_KINDS)
    edges = _edge_blocks(report.layers) if settings.edge_bits is not None and any_blocks else ()
    entries: list[dict[str, Any]] = []
    for index, layer in enumerate(report.layers):
        score = score_of(layer, metric)
        entry = {
            "name": layer.name,
            "tensor": layer.tensor,
            "kind": layer.kind,
            "block": layer.block,
            "params": layer.params,
            metric: score,
            "unit": None,
            "score": None,
            "stored_bits": stored_bits(layer.storage),
            "bits": None,
            "note": None,
        }
        entries.append(entry)
        role = _role(layer, index, len(report.layers), any_blocks, edges)
        held = {"edge": settings.edge_bits, "outside": settings.embedding_bits}.get(role)
        if held is not None and layer.kind in HELD_KINDS:
            entry["unit"] = layer.name
            entry["bits"] = held
            entry["note"] = f"{'first/last ' + ('block' if any_blocks else 'layer') if role == 'edge' else 'outside the blocks'}, held at {held} bits"
        elif role == "allocated" and score is not None:
            entry["unit"] = layer.block if settings.unit == "block" else fused_unit(layer.name)
        elif role == "allocated":
            entry["note"] = missing_score_note(layer, metric) + ", not quantized"
        else:
            entry["note"] = _outside_note(layer, role)
    units = _units(entries, metric)
    if not units:
        raise HtsrError(f"{report.checkpoint}: no weight matrix in scope has an {metric} to allocate bits from")
    held = [entry for entry in entries if entry["bits"] is not None]
    for entry in held:
        _check_stored(report.checkpoint, entry, entry["bits"])
    allocation = _allocate(report.checkpoint, units, held, settings)
    for (name, members), bits in zip(units.items(), allocation.bits):
        score = sum(member[metric] for member in members) / len(members)
        for member in members:
            member["score"] = score
            member["bits"] = bits
    return _document(report, settings, entries, allocation, model_type)


def _edge_blocks(layers: Sequence[LayerResult]) -> tuple[str, ...]:
    blocks = list(dict.fromkeys(layer.block for layer in layers if layer.block is not None and layer.kind in ALLOCATED_KINDS))
    return (blocks[0], blocks[-1]) if blocks else ()


def _role(layer: LayerResult, index: int, count: int, any_blocks: bool, edges: tuple[str, ...]) -> str:
    """allocated, edge (first/last block, or first/last matrix of a blockless model), outside or other."""
    if layer.kind not in ALLOCATED_KINDS:
        return "outside" if layer.kind == "embedding" else "other"
    if any_blocks:
        if layer.block is None:
            return "outside"
        return "edge" if layer.block in edges else "allocated"
    return "edge" if index in (0, count - 1) else "allocated"


def _outside_note(layer: LayerResult, role: str) -> str:
    if role == "edge":  # a model without blocks: its first and last matrix, as TempBalance leaves them
        return "first/last layer, not quantized (--edge-bits holds it at a width)"
    if role == "outside":
        what = "embedding" if layer.kind == "embedding" else "outside the blocks"
        return f"{what}, not quantized (--embedding-bits holds it at a width)"
    return f"{layer.kind}, not quantized"


def _units(entries: list[dict[str, Any]], metric: str) -> dict[str, list[dict[str, Any]]]:
    units: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        if entry["unit"] is not None and entry["bits"] is None:
            units.setdefault(entry["unit"], []).append(entry)
    return units


def _check_stored(checkpoint: str, entry: dict[str, Any], bits: int) -> None:
    stored = entry["stored_bits"]
    if stored is not None and stored < bits:
        raise HtsrError(
            f"{checkpoint}: {entry['tensor']} is already quantized to {stored} bits, fewer than the {bits} asked; "
            "allocate from the original weights"
        )


def _allocate(checkpoint: str, units: dict[str, list[dict]], held: list[dict], settings: BitsSettings) -> Allocation:
    sizes, options, scores = [], [], []
    for name, members in units.items():
        stored = [m["stored_bits"] for m in members if m["stored_bits"] is not None]
        cap = min(stored) if stored else MAX_BITS
        allowed = [choice for choice in settings.choices if choice <= cap]
        if not allowed:
            raise HtsrError(
                f"{checkpoint}: {members[0]['tensor']} is already quantized to {cap} bits, fewer than the smallest "
                f"choice {settings.choices[0]}; allocate from the original weights"
            )
        sizes.append(sum(m["params"] for m in members))
        options.append(allowed)
        scores.append(sum(m[settings.metric] for m in members) / len(members))
    held_params = sum(entry["params"] for entry in held)
    held_bits = sum(entry["params"] * entry["bits"] for entry in held)
    total = sum(sizes) + held_params
    capacity = Fraction(settings.average) * total - held_bits
    smallest = sum(size * min(allowed) for size, allowed in zip(sizes, options)) + held_bits
    if smallest > Fraction(settings.average) * total:
        raise InvalidSetting(
            "average", settings.average,
            f"is below what the held layers ({held_bits / held_params if held_params else 0:.2f} bits on "
            f"{held_params:,} params) and the smallest choices need: {smallest / total:.3f} bits on average",
        )
    largest = sum(size * max(allowed) for size, allowed in zip(sizes, options)) + held_bits
    capped = any(max(allowed) < settings.choices[-1] for allowed in options)
    if capped and largest < Fraction(settings.average) * total:
        raise HtsrError(
            f"{checkpoint} is already quantized: its matrices hold at most {largest / total:.2f} bits on average, "
            f"fewer than --average {settings.average}; allocate from the original weights"
        )
    return bits_allocation(sizes, options, alpha_distortions(scores, sizes, options, settings.spread), capacity)


def _document(report: Report, settings: BitsSettings, entries, allocation: Allocation, model_type) -> dict[str, Any]:
    quantized = [entry for entry in entries if entry["bits"] is not None]
    allocated = [entry for entry in quantized if entry["note"] is None]
    params = sum(entry["params"] for entry in quantized)
    bits = sum(entry["params"] * entry["bits"] for entry in quantized)
    widths: dict[str, int] = {}
    for entry in sorted(quantized, key=lambda entry: entry["bits"]):
        widths[str(entry["bits"])] = widths.get(str(entry["bits"]), 0) + entry["params"]
    return {
        "schema": SCHEMA,
        "htsr_version": report.htsr_version,
        "checkpoint": report.checkpoint,
        "model_type": model_type,
        "settings": {
            "average": settings.average,
            "choices": list(settings.choices),
            "unit": settings.unit,
            "metric": settings.metric,
            "spread": settings.spread,
            "group_size": settings.group_size,
            "embedding_bits": settings.embedding_bits,
            "edge_bits": settings.edge_bits,
            "analysis": report.settings,
        },
        "layers": entries,
        "summary": {
            "allocated": len(allocated),
            "held": len(quantized) - len(allocated),
            "excluded": len(entries) - len(quantized),
            "units": len({entry["unit"] for entry in allocated}),
            "quantized_params": params,
            "weighted_mean": bits / params,
            "budget": settings.average,
            "min_bits": min(entry["bits"] for entry in quantized),
            "max_bits": max(entry["bits"] for entry in quantized),
            "params_by_bits": widths,
            "exact": allocation.exact,
        },
    }
