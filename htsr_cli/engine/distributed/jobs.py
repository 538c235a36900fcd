"""The command line's jobs: what rank 0 asks the other ranks to analyse, as JSON.

Under `htsr` on torchrun only rank 0 runs the command; each analysis it starts
is written to the store as one of these messages, and the other ranks rebuild
the same call from it (see cluster.py and htsr_cli/cli/_ranks.py).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from os import PathLike
from typing import Any

from htsr_cli.checkpoints.sources import MergedAdapter
from htsr_cli.settings import AnalyzeSettings


def analysis_job(
    source: str | PathLike | MergedAdapter, settings: AnalyzeSettings, keep_spectra: bool, profile: bool
) -> dict:
    merged = isinstance(source, MergedAdapter)
    return {
        "source": source.adapter if merged else os.fspath(source),
        "merged_base": source.base if merged else None,
        "settings": dataclasses.asdict(settings),
        "keep_spectra": keep_spectra,
        "profile": profile,
    }


def job_source(job: dict[str, Any]) -> str | MergedAdapter:
    """The source an analysis job names: a path or hub id, or an adapter merged into its base."""
    base = job.get("merged_base")
    return job["source"] if base is None else MergedAdapter(job["source"], base)


def settings_from_json(data: dict[str, Any]) -> AnalyzeSettings:
    """`dataclasses.asdict(settings)` back into settings, nested settings (FARMS) included."""
    hints = typing.get_type_hints(AnalyzeSettings)
    values = {}
    for name, value in data.items():
        nested = [kind for kind in typing.get_args(hints[name]) if dataclasses.is_dataclass(kind)]
        values[name] = nested[0](**value) if nested and isinstance(value, dict) else value
    return AnalyzeSettings(**values)
