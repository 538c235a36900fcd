"""htsr: Heavy-Tailed Self-Regularization diagnostics from weights alone.

    import htsr_cli
    report = htsr_cli.analyze("model.safetensors", xmin="ks", keep_spectra=True)
    htsr_cli.describe("model.safetensors").layers  # what analyze would solve, from the headers alone
    report = htsr_cli.analyze(my_module, farms=htsr_cli.FarmsSettings())
    print(report.summary["mean_alpha"])
    report.to_pandas()                       # one row per layer (pip install pandas, or ".[pandas]" in a clone)
    report.plot_overview()                   # matplotlib Figures
    plan = htsr_cli.sparsity_plan(report, htsr_cli.SparsitySettings(target=0.7))

Names are resolved lazily so that `htsr --version` and `import htsr_cli`
do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "analyze": "htsr_cli.engine.pipeline",
    "describe": "htsr_cli.engine.describe",
    "Description": "htsr_cli.engine.describe",
    "PlannedLayer": "htsr_cli.engine.describe",
    "LayerSpectra": "htsr_cli.results.report",
    "AnalyzeSettings": "htsr_cli.settings",
    "FarmsSettings": "htsr_cli.settings",
    "Report": "htsr_cli.results.report",
    "LayerResult": "htsr_cli.results.report",
    "load_report": "htsr_cli.results.report",
    "HtsrError": "htsr_cli.errors",
    "InvalidSetting": "htsr_cli.errors",
    "open_checkpoint": "htsr_cli.checkpoints",
    "TempBalance": "htsr_cli.allocations",
    "sparsity_plan": "htsr_cli.allocations",
    "SparsitySettings": "htsr_cli.allocations",
    "lr_schedule": "htsr_cli.allocations",
    "LrSettings": "htsr_cli.allocations",
    "expert_plan": "htsr_cli.allocations",
    "ExpertSettings": "htsr_cli.allocations",
    "attach_spectra": "htsr_cli.results.spectra_file",
    "GateConfig": "htsr_cli.gate",
    "compare_reports": "htsr_cli.results.compare",
    "prune_checkpoint": "htsr_cli.pruning",
    "PruneSettings": "htsr_cli.pruning",
    "CalibrationSettings": "htsr_cli.pruning",
    "evaluate_perplexity": "htsr_cli.lm.perplexity",
    "PerplexitySettings": "htsr_cli.lm.perplexity",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'htsr_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (the lazy exports too) and the module's dunders, so `dir(htsr_cli)` and tab
    completion list what a user may call, not this module's own imports (`importlib`, `Any`)."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
