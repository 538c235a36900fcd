"""The notebook API of the package root: keyword settings of analyze and the lazy exports."""

from __future__ import annotations

import inspect

import pytest

import htsr_cli
from tests.conftest import FIXTURES

TINY_CNN = FIXTURES / "tiny-cnn-trained.pth"


def test_analyze_documents_its_keyword_settings():
    parameters = inspect.signature(htsr_cli.analyze).parameters
    assert not [p for p in parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    for name in ("xmin", "farms", "device", "precision", "conv_scale", "min_evals", "layers", "keep_spectra", "profile"):
        assert name in parameters and f"`{name}`" in htsr_cli.analyze.__doc__
    with pytest.raises(TypeError, match="either settings or keyword settings \\(xmin\\)"):
        htsr_cli.analyze(TINY_CNN, htsr_cli.AnalyzeSettings(), xmin="ks")
    assert htsr_cli.analyze(TINY_CNN, farms=True, layers="fc").has_farms


def test_dir_lists_the_lazy_exports():
    names = dir(htsr_cli)
    for name in ("analyze", "Report", "load_report", "SparsitySettings", "LrSettings", "ExpertSettings",
                 "TempBalance", "InvalidSetting", "attach_spectra", "__version__"):
        assert name in names
    assert htsr_cli.SparsitySettings(target=0.5).target == 0.5
    assert [name for name in names if not name.startswith("__")] == sorted(htsr_cli._EXPORTS)  # no Any, importlib


def test_a_missing_spectrum_names_the_public_attach_spectra():
    report = htsr_cli.analyze(TINY_CNN, layers="fc")
    with pytest.raises(htsr_cli.HtsrError, match=r"htsr_cli\.attach_spectra\)$"):
        report.plot_esd(report.layers[0].name)
    assert callable(htsr_cli.attach_spectra)
