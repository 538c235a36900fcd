"""For commands that take `CHECKPOINT|REPORT.json`: read saved reports, analyse checkpoints."""

from __future__ import annotations

from htsr_cli.cli._output import layer_progress, note
from htsr_cli.errors import HtsrError
from htsr_cli.results.report import Report, is_report_file, load_report
from htsr_cli.settings import AnalyzeSettings
from htsr_cli.checkpoints.sources import MergedAdapter, check_source, is_adapter_directory

Source = str | MergedAdapter


def checkpoint_source(checkpoint: str, merged: str | None, needs_model: str | None = None) -> Source:
    """What a CHECKPOINT argument with `--merged BASE` names, checked without importing torch.

    `needs_model` is the method of a command that allocates over the model's
    own layers (AlphaLoRA, TempBalance): an adapter alone is not a model there.
    """
    if merged is None:
        if needs_model is not None and is_adapter_directory(checkpoint):
            raise HtsrError(
                f"{checkpoint} is a PEFT adapter: {needs_model} needs the model it fine-tunes; add --merged BASE"
            )
        return checkpoint
    if is_report_file(checkpoint):
        raise HtsrError(f"{checkpoint} is a saved report: --merged applies to a PEFT adapter directory")
    check_source(checkpoint)
    check_source(merged)
    if not is_adapter_directory(checkpoint):
        raise HtsrError(f"{checkpoint}: --merged needs a PEFT adapter directory (with adapter_config.json)")
    return MergedAdapter(checkpoint, merged)


def reports_from(
    sources: list[Source], settings: AnalyzeSettings, quiet: bool, defaults: AnalyzeSettings = AnalyzeSettings()
) -> list[Report]:
    """Saved reports are read as they are; checkpoints are analysed with `settings`.

    Analysis options (settings other than the command's `defaults`) given when
    every source is a saved report would silently do nothing, so they are refused.
    """
    saved = [isinstance(source, str) and is_report_file(source) for source in sources]
    for source, is_saved in zip(sources, saved):
        if isinstance(source, str) and not is_saved:
            check_source(source)  # a missing path is reported before torch is imported
    if all(saved) and settings != defaults:
        raise HtsrError(
            f"{sources[0]} is a saved report: analysis options (--xmin, --farms, ...) apply only to a checkpoint"
        )
    reports = []
    for source, is_saved in zip(sources, saved):
        if is_saved:
            reports.append(load_report(source))
        else:
            from htsr_cli.engine.pipeline import analyze as run_analysis  # lazy torch, see app.py

            with layer_progress(quiet) as progress:
                reports.append(run_analysis(source, settings, progress=progress))
    return reports


def note_method_xmin(report: Report, source: Source, method: str, xmin: str, quiet: bool) -> None:
    """A saved report fitted with another xmin rule than the method's own: say so, once."""
    used = report.settings.get("xmin")
    if isinstance(source, str) and is_report_file(source) and used != xmin:
        note(
            f"{source} was analyzed with xmin={used}; {method} uses xmin={xmin} "
            f"(analyze the checkpoint with --xmin {xmin} to match it)",
            quiet,
        )


def check_metric_available(metric: str, farms: bool, sources: list[Source]) -> None:
    """alpha_farms comes only from an analysis with FARMS: refuse before a long run that cannot have it."""
    if metric == "alpha_farms" and not farms and not all(isinstance(source, str) and is_report_file(source) for source in sources):
        raise HtsrError("--metric alpha_farms needs FARMS alphas: add --farms to analyze the checkpoint with FARMS")


def analysis_report(
    source: Source, metric: str, settings: AnalyzeSettings, method: str, defaults: AnalyzeSettings, quiet: bool
) -> Report:
    """The report an allocation reads: a saved one as it is, or the checkpoint analyzed now.

    `defaults` are the method's analysis settings (its own xmin rule): a saved
    report fitted otherwise gets a note, and options that differ from them are
    refused for a saved report.
    """
    check_metric_available(metric, settings.farms is not None, [source])
    [report] = reports_from([source], settings, quiet, defaults=defaults)
    note_method_xmin(report, source, method, defaults.xmin, quiet)
    return report
