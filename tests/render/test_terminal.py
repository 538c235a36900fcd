"""Tables that fit the terminal: middle-shortened names, secondary columns dropped in order, a footnote."""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console

import htsr_cli
from tests.conftest import FIXTURES
from htsr_cli.cli import _output
from htsr_cli.errors import HtsrError
from htsr_cli.render.outputs import Column
from htsr_cli.results.report import RMT_FIELDS, LayerResult, Report, summarize
from htsr_cli.render.tables import DROP_ORDER, TABLE_COLUMNS, parse_columns, report_table
from htsr_cli.render.terminal import ELLIPSIS, fit_columns, shorten_middle, table_width

MOE = "model.layers.3.block_sparse_moe.experts.7.mlp.down_proj"


@pytest.mark.parametrize(("width", "short"), [
    (60, MOE),
    (44, "model.layers.3…experts.7.mlp.down_proj"),
    (30, "model.layers.3…7.mlp.down_proj"),
    (24, "model.layers.3…down_proj"),
    (20, "model.laye…down_proj"),  # block and leaf no longer fit: the leaf stays whole
    (9, "…own_proj"),
    (1, "…"),
])
def test_shorten_middle_keeps_block_and_leaf(width, short):
    assert shorten_middle(MOE, width) == short
    assert cell_len(short) <= width


def test_shorten_middle_without_a_block_keeps_the_first_component():
    assert shorten_middle("encoder.attention.output.dense", 25) == "encoder…output.dense"
    assert shorten_middle("transformer.wte", 40) == "transformer.wte"


@given(st.text(alphabet=st.sampled_from("ab.0123_中\U0001F600"), max_size=80), st.integers(1, 90))
def test_shorten_middle_never_exceeds_the_width(name, width):
    short = shorten_middle(name, width)
    assert cell_len(short) <= width
    assert short == name or ELLIPSIS in short


def test_table_width_counts_padding_and_borders():
    console = Console(file=io.StringIO(), width=200)
    from rich.table import Table

    table = Table()
    for header, cell in (("a", "xyz"), ("bb", "c")):
        table.add_column(header)
    table.add_row("xyz", "c")
    assert console.measure(table).maximum == table_width([3, 2])


def long_report(farms: bool = False) -> Report:
    layers = []
    for block in range(3):
        for leaf, alpha in (("self_attn.q_proj", 2.5), ("block_sparse_moe.experts.7.mlp.down_proj", 7.25)):
            name = f"model.layers.{block}.{leaf}"
            layers.append(LayerResult(
                name=name, tensor=f"{name}.weight", kind="linear", shape=[4096, 14336], block=f"model.layers.{block}",
                params=4096 * 14336, status="ok", num_evals=4096, alpha=alpha, xmin=12.3456, ks_distance=0.0412,
                lambda_max=1234.567, alpha_weighted=22.345, stable_rank=45.67, quality=htsr_cli.results.report.quality_of(alpha),
                alpha_farms=alpha + 0.5 if farms else None,
            ))
    layers.append(LayerResult(name="lm_head", tensor="lm_head.weight", kind="linear", shape=[2, 4096], block=None,
                              params=8192, status="skipped", reason="2 eigenvalues < min_evals 10"))
    settings = {"xmin": "ks", "xmin_candidates": "exact", "precision": "float64", "device": "cpu",
                "farms": {"window": 2000, "q": 1.0, "steps": 10} if farms else None}
    return Report("/models/mixtral", settings, layers, summarize(layers, 1.5, with_farms=farms))


def render(report: Report, width: int, columns=None) -> list[str]:
    console = Console(file=io.StringIO(), width=width, no_color=True)
    console.print(report_table(report, width, columns))
    return console.file.getvalue().splitlines()


def header_cells(lines: list[str]) -> list[str]:
    header = next(line for line in lines if line.startswith("┃"))
    return [cell.strip() for cell in header.strip("┃").split("┃")]


HEADERS = {column.key: column.header for column in TABLE_COLUMNS}
RMT_KEYS = {key for keys in RMT_FIELDS.values() for key in keys}


@pytest.mark.parametrize(("width", "hidden"), [
    # 80: layer (names cut to 40) + kind + alpha + quality; 120: 40 + 6 + 10 + 6 + 6 + 8 + 6 + 13 + 25 of borders
    (80, ["stable_rank", "alpha_w", "lambda_max", "xmin", "D", "#evals", "shape"]),
    (120, ["stable_rank", "alpha_w", "lambda_max"]),
    (200, []),
])
def test_analyze_table_fits_80_120_and_200_columns(width, hidden):
    lines = render(long_report(), width)
    assert max(cell_len(line) for line in lines) <= width
    shown = header_cells(lines)
    assert shown[0] == "layer" and "alpha" in shown and shown[-1] == "quality"
    assert "kind: linear on every row" in lines  # every layer is linear: a note, not a column
    # The report has no FARMS or random-matrix columns: the others drop in the fixed order.
    in_order = [key for key in DROP_ORDER if key not in ("alpha_farms", "kind") and key not in RMT_KEYS]
    assert [HEADERS[key] for key in in_order if HEADERS[key] not in shown] == hidden
    assert hidden == [HEADERS[key] for key in in_order[: len(hidden)]]  # always a prefix of the fixed order
    footnote = [line for line in lines if line.startswith("hidden at")]
    if hidden:
        assert " ".join(footnote + lines[lines.index(footnote[0]) + 1:][:1]).startswith(
            f"hidden at {width} columns: {', '.join(hidden)}"
        )
    else:
        assert footnote == []
    body = [line for line in lines if line.startswith("│") and line.strip("│").split("│")[0].strip()]
    assert len(body) == 7
    for line in body:  # the block index and the leaf survive any cut
        name = line.strip("│").split("│")[0].strip()
        assert re.match(r"^(model\.layers\.\d…?.*(q_proj|down_proj)|lm_head)$", name), name


def test_at_80_columns_names_are_cut_in_the_middle_and_alpha_quality_stay():
    lines = render(long_report(farms=True), 80)
    assert max(cell_len(line) for line in lines) <= 80
    body = [line for line in lines if line.startswith("│")]
    names = [line.strip("│").split("│")[0].strip() for line in body]
    assert "model.layers.0.self_attn.q_proj" in names
    assert "model.layers.0…experts.7.mlp.down_proj" in names
    assert any("7.250" in line and "under-trained" in line for line in body)
    assert header_cells(lines) == ["layer", "alpha", "quality"]


def test_columns_choose_exactly_what_shows():
    columns = parse_columns("layer,alpha,D,tail_size,entropy,quality")
    assert [c.key for c in columns] == ["name", "alpha", "ks_distance", "tail_size", "entropy", "quality"]
    lines = render(long_report(), 80, columns)
    assert header_cells(lines) == ["layer", "alpha", "D", "tail_size", "entropy", "quality"]
    assert not [line for line in lines if line.startswith("hidden at")]
    with pytest.raises(HtsrError, match="--columns: unknown column 'alfa'"):
        parse_columns("layer,alfa")
    with pytest.raises(HtsrError, match="at least one column"):
        parse_columns(" , ")


def test_drop_order_only_names_table_columns():
    assert set(DROP_ORDER) <= {column.key for column in TABLE_COLUMNS}
    assert {"name", "alpha", "quality"}.isdisjoint(DROP_ORDER)


def test_fit_columns_without_a_width_keeps_everything():
    columns = [Column("name", "layer", justify="left"), Column("x", "x")]
    rows = [{"name": MOE, "x": 1}]
    fitted = fit_columns(columns, rows, None, drop_order=("x",))
    assert fitted.columns == columns and fitted.rows == rows and fitted.hidden == []


def test_piped_output_keeps_every_column_unwrapped(cli, monkeypatch):
    result = cli("analyze", FIXTURES / "tiny-llama")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert header_cells(lines) == [c.header for c in TABLE_COLUMNS if c.key != "alpha_farms" and c.key not in RMT_KEYS]
    assert "model.layers.0.self_attn.q_proj" in result.stdout
    assert not [line for line in lines if line.startswith("hidden at")]
    assert all(line == line.rstrip() for line in lines)
    summary = [line for line in lines if "layers analyzed" in line]
    assert len(summary) == 1 and "param-weighted mean alpha" in summary[0]  # one unwrapped line


def test_on_a_terminal_the_table_fits_its_width(cli, monkeypatch):
    terminal = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    monkeypatch.setattr(_output, "stdout_console", terminal)
    result = cli("analyze", FIXTURES / "tiny-llama")
    assert result.exit_code == 0, result.output
    lines = terminal.file.getvalue().splitlines()
    assert max(cell_len(line) for line in lines) <= 80
    assert any(line.startswith("hidden at 80 columns: stable_rank") for line in lines)
