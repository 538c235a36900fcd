"""htsr allocate bits: per-layer bit widths from alpha (mixed-precision quantization), and the
exports that feed llama.cpp and llm-compressor (examples in the command's help)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from htsr_cli.allocations.bits import BitsSettings, bits_plan
from htsr_cli.cli._analysis_options import analysis_options
from htsr_cli.cli._options import CheckpointOrReportArg, Metric, MetricOpt, OutputOpt, QuietOpt
from htsr_cli.cli._output import emit_renderable, emit_text, note, table_width
from htsr_cli.cli._reports import analysis_report
from htsr_cli.errors import InvalidSetting
from htsr_cli.io import check_output_paths
from htsr_cli.render.outputs import Column, to_csv
from htsr_cli.render.terminal import terminal_table
from htsr_cli.results.documents import dumps_json
from htsr_cli.results.report import Report, is_report_file
from htsr_cli.settings import AnalyzeSettings

PEAK = AnalyzeSettings(xmin="peak")  # alphas as AlphaPruning fits them


class BitsFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    llama_cpp = "llama-cpp"
    llm_compressor = "llm-compressor"


class Unit(str, Enum):
    layer = "layer"
    block = "block"


class RecipeModifier(str, Enum):
    gptq = "gptq"
    rtn = "rtn"


AverageOpt = Annotated[
    float, typer.Option("--average", help="Parameter-weighted mean bits (never exceeded), within the choices' range.", show_default=False)
]
ChoicesOpt = Annotated[str, typer.Option("--choices", help="Widths a layer may get, comma-separated whole bits in 1..16.")]
UnitOpt = Annotated[
    Unit, typer.Option("--unit", help="layer: one width per matrix (q/k/v and gate/up share one, as vLLM fuses them); block: one per block.")
]
SpreadOpt = Annotated[
    float, typer.Option("--spread", help="Bits between the middle and the best- (or worst-) trained unit before rounding to the choices.")
]
GroupSizeOpt = Annotated[
    int, typer.Option("--group-size", help="Input columns per scale, for the exports and htsr quantize (0: one scale per row).")
]
EmbeddingBitsOpt = Annotated[
    Optional[int],
    typer.Option("--embedding-bits", help="Hold embeddings and other matrices outside the blocks at this width (counted in the average).", show_default="not quantized"),
]
EdgeBitsOpt = Annotated[
    Optional[int],
    typer.Option("--edge-bits", help="Hold the first and last block (a blockless model: first and last matrix) at this width.", show_default="allocated like the rest"),
]
FormatOpt = Annotated[
    BitsFormat,
    typer.Option("--format", "-f", help="table, json (htsr.bits/1), csv, llama-cpp (llama-quantize --tensor-type-file), llm-compressor (recipe YAML)."),
]
RecipeOpt = Annotated[
    RecipeModifier, typer.Option("--recipe", help="llm-compressor modifier of -f llm-compressor: gptq (GPTQModifier) or rtn (QuantizationModifier).")
]


def parse_choices(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InvalidSetting("choices", text, "must be whole numbers of bits in 1..16, comma-separated (2,3,4,8)") from None


@analysis_options
def bits(
    source: CheckpointOrReportArg,
    average: AverageOpt,
    choices: ChoicesOpt = "2,3,4,8",
    unit: UnitOpt = Unit.layer,
    metric: MetricOpt = Metric.alpha,
    spread: SpreadOpt = 1.0,
    group_size: GroupSizeOpt = 128,
    embedding_bits: EmbeddingBitsOpt = None,
    edge_bits: EdgeBitsOpt = None,
    output_format: FormatOpt = BitsFormat.table,
    recipe: RecipeOpt = RecipeModifier.gptq,
    output: OutputOpt = None,
    analysis: AnalyzeSettings = PEAK,
    quiet: QuietOpt = False,
) -> None:
    """Bit width per layer from alpha: better-trained layers (smaller alpha) get more bits.

    An exact solver picks widths from --choices whose parameter-weighted mean is
    as close to --average as the choices allow without exceeding it. A saved
    report is used as it is (alphas fitted with --xmin peak, as AlphaPruning does).

    [bold]Examples:[/bold]
      htsr allocate bits ./llama-7b --average 4
      htsr allocate bits ./llama-7b --average 3 --choices 2,3,4,8 -f json -o bits.json
      htsr allocate bits run.json --average 3.5 -f llama-cpp -o tensor-types.txt
      htsr allocate bits ./llama-7b --average 4 --choices 3,4,8 -f llm-compressor -o recipe.yaml
    """
    settings = BitsSettings(
        average, parse_choices(choices), unit.value, metric.value, spread, group_size, embedding_bits, edge_bits
    )
    check_output_paths({"-o": output}, [source])
    report = analysis_report(source, metric.value, analysis, "AlphaPruning", PEAK, quiet)
    plan = bits_plan(report, settings, model_type_of(source, report))
    if output_format is BitsFormat.llama_cpp:
        from htsr_cli.allocations.bits_exports import llama_cpp_tensor_types

        emit_text(llama_cpp_tensor_types(plan), output, quiet)
        note("llama-quantize --tensor-type-file FILE MODEL-F16.gguf OUT.gguf Q4_K_M applies it "
             "(the last argument types the tensors not listed)", quiet)
        return
    if output_format is BitsFormat.llm_compressor:
        from htsr_cli.allocations.bits_exports import llm_compressor_recipe

        emit_text(llm_compressor_recipe(plan, recipe.value), output, quiet)
        return
    if output_format is BitsFormat.json:
        emit_text(dumps_json(plan), output, quiet)
        return
    if output_format is BitsFormat.csv:
        keys = ("name", "tensor", "kind", "block", "params", settings.metric, "unit", "score", "stored_bits", "bits", "note")
        emit_text(to_csv([Column(key, key) for key in keys], plan["layers"]), output, quiet)
        return
    columns = [
        Column("name", "module", justify="left"),
        Column("params", "params"),
        Column(settings.metric, settings.metric, 3),
        Column("score", f"{settings.unit} mean" if settings.unit == "block" else "unit mean", 3),
        Column("bits", "bits"),
        Column("note", "note", justify="left"),
    ]
    summary = plan["summary"]
    widths = ", ".join(f"{bits} bits {params / summary['quantized_params']:.0%}" for bits, params in summary["params_by_bits"].items())
    caption = (
        f"weighted mean {summary['weighted_mean']:.4f} bits (average {settings.average}) over "
        f"{summary['allocated'] + summary['held']} matrices, {summary['quantized_params']:,} params | {widths} | "
        f"held {summary['held']} | not quantized {summary['excluded']}"
    )
    table = terminal_table(columns, plan["layers"], table_width(output), notes=[caption], keep=("name", "bits", "note"))
    emit_renderable(table, output, quiet)


def model_type_of(source: str, report: Report) -> str | None:
    """The architecture the llama.cpp export names tensors for: the GGUF file's own, or config.json's
    model_type beside the checkpoint (read only when there is one: a saved report needs no torch)."""
    architecture = (report.checkpoint_format or {}).get("architecture")
    if isinstance(architecture, str):
        return architecture
    checkpoint = Path(report.checkpoint if is_report_file(source) else source)
    directory = checkpoint if checkpoint.is_dir() else checkpoint.parent
    if not (directory / "config.json").is_file():
        return None
    from htsr_cli.checkpoints.order import config_model_type

    return config_model_type(directory)
