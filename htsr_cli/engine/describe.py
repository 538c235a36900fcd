"""`describe`: the layers an analysis would solve, and why it would skip the others, without solving anything.

The same planning `analyze` does (engine.pipeline): list the checkpoint's
tensors (headers only where the format has them), classify each weight
matrix, apply `--layers`, `--min-evals` and the memory budget. No tensor data
is read from a safetensors or GGUF file; a torch file's pickle is unpickled
with its tensors memory-mapped, and the description says so (`reads`).

    description = describe("model.safetensors", AnalyzeSettings(min_evals=20))
    for layer in description.layers:
        print(layer.name, layer.kind, layer.shape, layer.status, layer.skip_reason)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from htsr_cli import __version__
from htsr_cli.checkpoints import open_checkpoint
from htsr_cli.engine.pipeline import Source, memory_budget, plan_layers, within_budget, work_bytes
from htsr_cli.results.documents import dumps_json
from htsr_cli.settings import AnalyzeSettings
from htsr_cli.spectra.solver import Eigensolver, SolverPrecision, dtype_name

SCHEMA = "htsr.describe/1"
ANALYZE = "analyze"
SKIP = "skip"


@dataclass(frozen=True)
class PlannedLayer:
    """One weight matrix as `analyze` with the same settings would treat it."""

    name: str  # the module path (the report's `name`)
    tensor: str  # the stored key it is read from
    kind: str  # linear | embedding | conv1d | conv2d | other
    shape: tuple[int, ...]
    block: str | None
    params: int
    num_evals: int  # eigenvalues of its pooled ESD (0 when it cannot be analysed)
    storage: str  # how it is stored: a dtype, or a format ("gguf Q4_1", "weight_norm float32")
    dtype: str  # the dtype it is read in
    solve_bytes: int  # memory its solve would need at its peak
    skip_reason: str | None  # why analyze would skip it; None when it would be analysed

    @property
    def status(self) -> str:
        return ANALYZE if self.skip_reason is None else SKIP

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tensor": self.tensor,
            "kind": self.kind,
            "shape": list(self.shape),
            "block": self.block,
            "params": self.params,
            "num_evals": self.num_evals,
            "storage": self.storage,
            "dtype": self.dtype,
            "solve_bytes": self.solve_bytes,
            "status": self.status,
            "reason": self.skip_reason,
        }


@dataclass(frozen=True)
class Description:
    """What `describe` found: the checkpoint's weight matrices in module order, and what listing them read."""

    checkpoint: str
    reads: str  # what listing the tensors read from disk
    tensors: int  # every tensor listed, weight matrices or not
    settings: dict[str, Any]  # the settings that decide what is analysed, with the memory budget used
    layers: list[PlannedLayer]
    checkpoint_format: dict[str, object] | None = None
    summary: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        analysed = [layer for layer in self.layers if layer.skip_reason is None]
        object.__setattr__(self, "summary", {
            "layers": len(self.layers),
            "to_analyze": len(analysed),
            "skipped": len(self.layers) - len(analysed),
            "params": sum(layer.params for layer in self.layers),
            "params_to_analyze": sum(layer.params for layer in analysed),
            "num_evals": sum(layer.num_evals for layer in analysed),
        })

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "htsr_version": __version__,
            "checkpoint": self.checkpoint,
            "checkpoint_format": self.checkpoint_format,
            "reads": self.reads,
            "tensors": self.tensors,
            "settings": self.settings,
            "summary": dict(self.summary),
            "layers": [layer.to_json() for layer in self.layers],
        }

    def dumps(self) -> str:
        return dumps_json(self.to_json())


def describe(source: Source, settings: AnalyzeSettings | None = None) -> Description:
    """The weight matrices `analyze(source, settings)` would solve and skip, in module order, without solving.

    `source` is anything `analyze` takes. The settings that change the list are
    `layers`, `min_evals`, and through the memory each solve needs, `max_memory`,
    `device`, `precision`, `xmin` and `farms`; the others are accepted and unused.
    """
    settings = settings or AnalyzeSettings()
    solver = Eigensolver.create(settings.device, SolverPrecision.for_settings(settings))
    budget = memory_budget(settings, solver)
    with open_checkpoint(source) as checkpoint:
        specs = [within_budget(spec, settings, solver, budget) for spec in plan_layers(checkpoint, settings)]
        listed = checkpoint.tensors()  # module order (a Hugging Face config's architecture, where there is one)
        reads = checkpoint.listing_reads()
        checkpoint_format = checkpoint.format_info()
        name = checkpoint.source
    rank = {info.key: index for index, info in enumerate(listed)}
    specs.sort(key=lambda spec: rank[spec.tensor])  # stable: a fused tensor's experts keep their order
    layers = [
        PlannedLayer(
            name=spec.name,
            tensor=spec.tensor,
            kind=spec.kind,
            shape=spec.shape,
            block=spec.block,
            params=spec.params,
            num_evals=spec.num_evals,
            storage=spec.storage or dtype_name(spec.dtype),
            dtype=dtype_name(spec.dtype),
            solve_bytes=work_bytes(spec, settings, solver),
            skip_reason=spec.skip_reason,
        )
        for spec in specs
    ]
    recorded = {
        "min_evals": settings.min_evals,
        "layers": settings.layers,
        "device": solver.device.type,
        "memory_budget": budget[0] if budget[1] != "unknown" else None,
        "memory_budget_from": budget[1].split(";")[0],  # --max-memory, available memory, free GPU memory
    }
    return Description(name, reads, len(listed), recorded, layers, checkpoint_format)
