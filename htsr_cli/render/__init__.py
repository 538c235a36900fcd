"""How results leave: tables, CSV, Markdown, HTML, plots. Everything here takes results and
never imports the engine.

outputs.py   cells, columns and the table formats (rich, CSV, Markdown)
terminal.py  fitting a table to the terminal's width
tables.py    a report's layer table and summary in every format
plots.py     matplotlib figures of a report and its spectra
html.py      the one-file HTML report
"""

from __future__ import annotations

import importlib
from typing import Any

# What a Report draws of itself (Report.plot_*, Report._repr_html_), resolved on
# first use so that importing one renderer does not import matplotlib.
_EXPORTS = {
    "report_html": "htsr_cli.render.tables",
    "overview_figure": "htsr_cli.render.plots",
    "esd_figure": "htsr_cli.render.plots",
    "fit_diagnostics_figure": "htsr_cli.render.plots",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'htsr_cli.render' has no attribute {name!r}")
