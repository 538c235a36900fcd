"""The package's layout: imports go down the pipeline's stages, never round in a cycle.

Every module under htsr_cli is parsed and each of its imports of another htsr_cli
module is an edge, wherever the import sits: at the top, inside a function (the
commands import torch-backed code at call time), or under TYPE_CHECKING. The lazy
exports of htsr_cli/__init__.py (and of checkpoints/ and render/) map names to
module paths as strings; they are not imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "htsr_cli"
# The stages from the bottom up: a module may import its own stage and any stage below it.
LAYERS = [
    {"errors", "io", "names", "settings"},  # the ground floor, modules at the package root
    {"spectra", "checkpoints", "landscape"},
    {"results"},
    {"engine", "render", "lm"},
    {"allocations", "gate", "diagnosis"},
    {"pruning", "quantize", "integrations", "training"},
    {"cli"},
]
LEVEL = {stage: level for level, stages in enumerate(LAYERS) for stage in stages}
ROOT_MODULES = {"__init__", "__main__", *LAYERS[0]}
# A Report draws itself in notebooks (plot_*, _repr_html_) although rendering sits above
# results: report._render() imports htsr_cli.render at call time, the one upward import.
ALLOWED_UPWARD = {("htsr_cli.results.report", "htsr_cli.render")}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, known: set[str]) -> list[str]:
    """The htsr_cli modules one import statement loads (a name from a module counts as that module)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importer's package, one level up per extra dot
            package = importer.split(".") if is_package else importer.split(".")[:-1]
            anchor = package[: len(package) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    found = []
    for target in targets:
        parts = target.split(".")
        # `import htsr_cli.a.b` loads module a.b; a name inside a module resolves to that module
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts:
            found.append(".".join(parts))
    return found


def import_edges() -> dict[tuple[str, str], str]:
    """(importer, imported) -> where the first such import is written (path:line)."""
    files = module_files()
    edges: dict[tuple[str, str], str] = {}
    for importer, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for imported in imported_modules(node, importer, path.name == "__init__.py", set(files)):
                    if imported != importer:
                        edges.setdefault((importer, imported), f"{path.relative_to(REPO)}:{node.lineno}")
    return edges


def stage_of(module: str) -> str:
    """htsr_cli.engine.pipeline -> engine; htsr_cli.errors -> errors; the root package -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def level_of(module: str) -> int:
    stage = stage_of(module)
    if stage == "__init__":
        return 0  # the root's only real imports are from the standard library: its exports are lazy
    if stage == "__main__":
        return len(LAYERS)  # `python -m htsr_cli`: above the command line it starts
    assert stage in LEVEL, f"htsr_cli/{stage} is not in LAYERS: give it its level in the pipeline"
    return LEVEL[stage]


def cycles(edges: dict[tuple[str, str], str]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan's algorithm, then a walk)."""
    graph: dict[str, list[str]] = {}
    for importer, imported in sorted(edges):
        graph.setdefault(importer, []).append(imported)
        graph.setdefault(imported, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in graph:
        if module not in index:
            connect(module)
    found = []
    for group in groups:  # walk inside the group from its first module until a module repeats
        path = [min(group)]
        while True:
            step = next(target for target in graph[path[-1]] if target in group)
            if step in path:
                found.append(path[path.index(step):] + [step])
                break
            path.append(step)
    return found


def test_every_stage_has_a_place_in_the_layering():
    unplaced = sorted({stage_of(module) for module in module_files()} - set(LEVEL) - {"__init__", "__main__"})
    assert not unplaced, f"htsr_cli/{unplaced[0]} is not in LAYERS: give it its level in the pipeline"


def test_the_import_graph_has_no_cycle():
    edges = import_edges()
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(
        "  " + " -> ".join(cycle) + "\n" + "".join(f"    {edges[a, b]}: {a} imports {b}\n" for a, b in zip(cycle, cycle[1:]))
        for cycle in found
    )


def test_imports_only_go_down_the_stages():
    upward = [
        f"  {where}: {importer} ({stage_of(importer)}) imports {imported} ({stage_of(imported)}), a stage above it"
        for (importer, imported), where in sorted(import_edges().items(), key=lambda item: item[1])
        if level_of(imported) > level_of(importer) and (importer, imported) not in ALLOWED_UPWARD
    ]
    assert not upward, "imports that go up the pipeline (" + " < ".join(
        ", ".join(sorted(stages)) for stages in LAYERS
    ) + "):\n" + "\n".join(upward)


def test_the_package_root_holds_only_the_ground_floor():
    extra = sorted(path.name for path in PACKAGE.glob("*.py") if path.stem not in ROOT_MODULES)
    assert not extra, f"modules at the package root beyond {sorted(ROOT_MODULES)}: {extra} (move them into their stage)"


def test_the_graph_sees_call_time_and_relative_imports():
    """The parser itself: the edges the layering rests on are found where they are written."""
    edges = import_edges()
    assert ("htsr_cli.results.report", "htsr_cli.render") in edges  # inside _render()
    assert ("htsr_cli.cli", "htsr_cli.cli.app") in edges  # inside main()
    assert ("htsr_cli.engine.pipeline", "htsr_cli") in edges  # from htsr_cli import __version__
    assert not [edge for edge in edges if edge[0] == "htsr_cli"]  # the root's exports are strings
    known = set(module_files())
    relative = ast.parse("from ..errors import HtsrError\nfrom . import fit, solver").body
    assert imported_modules(relative[0], "htsr_cli.spectra.farms", False, known) == ["htsr_cli.errors"]
    assert imported_modules(relative[1], "htsr_cli.spectra", True, known) == ["htsr_cli.spectra.fit", "htsr_cli.spectra.solver"]
