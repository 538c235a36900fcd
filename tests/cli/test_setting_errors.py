"""Every settings class refuses a bad value one way: an InvalidSetting naming the Python
parameter, which the command line shows under its flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from htsr_cli.allocations import ExpertSettings, LrSettings, SparsitySettings
from htsr_cli.cli._options import as_flag
from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.lm.perplexity import PerplexitySettings
from htsr_cli.pruning import CalibrationSettings, OwlSettings, PruneSettings
from htsr_cli.settings import AnalyzeSettings, FarmsSettings

REPO = Path(__file__).resolve().parents[2]
TINY_LLAMA = REPO / "fixtures" / "tiny-llama"
TEXT = Path("calibration.txt")

# (what refuses, the parameter it names, the start of the Python message, the start of the command line's)
REFUSALS = [
    (lambda: AnalyzeSettings(xmin="mean"), "xmin", "xmin='mean': must be one of ks, median, peak", "--xmin mean: must be"),
    (lambda: AnalyzeSettings(device="tpu"), "device", "device='tpu': must be one of auto, cpu, cuda", "--device tpu: must be"),
    (lambda: AnalyzeSettings(precision="half"), "precision", "precision='half': must be one of", "--precision half: must be"),
    (lambda: AnalyzeSettings(conv_scale=0.0), "conv_scale", "conv_scale=0.0: must be in", "--conv-scale 0.0: must be in"),
    (lambda: AnalyzeSettings(min_evals=2.5), "min_evals", "min_evals=2.5: must be a whole number", "--min-evals 2.5: must be"),
    (lambda: AnalyzeSettings(layers=3), "layers", "layers=3: must be a regular expression", "--layers 3: must be"),
    (lambda: AnalyzeSettings(max_memory="lots"), "max_memory", "max_memory='lots': not a size", "--max-memory lots: not a size"),
    (lambda: AnalyzeSettings(max_memory="8 GB of RAM"), "max_memory", "max_memory='8 GB of RAM': not a size",
     "--max-memory '8 GB of RAM': not a size"),
    (lambda: AnalyzeSettings(max_memory=8), "max_memory", "max_memory=8: must be at least 1MiB", "--max-memory 8: must be"),
    (lambda: AnalyzeSettings(fit="power"), "fit", "fit='power': must be one of pl, tpl, e_tpl", "--fit power: must be"),
    (lambda: AnalyzeSettings(fix_fingers="xmin_peak"), "fix_fingers", "fix_fingers='xmin_peak': must be one of none, clip_xmax",
     "--fix-fingers xmin_peak: must be"),
    (lambda: AnalyzeSettings(small_n="tiny"), "small_n", "small_n='tiny': must be one of htsr, ww", "--small-n tiny: must be"),
    (lambda: AnalyzeSettings(small_n="ww", xmin="peak"), "small_n", "small_n='ww': WeightWatcher's small-N path chooses xmin",
     "--small-n ww: WeightWatcher's small-N path"),
    (lambda: AnalyzeSettings(seed=-1), "seed", "seed=-1: must be a whole number in [0, 2^63)", "--seed -1: must be"),
    (lambda: AnalyzeSettings(mp_fit="yes"), "mp_fit", "mp_fit='yes': must be True or False", "--mp-fit yes: must be"),
    (lambda: FarmsSettings(window=0), "window", "window=0: must be at least 1", "--farms-window 0: must be"),
    (lambda: FarmsSettings(q=float("nan")), "q", "q=nan: must be a window aspect ratio", "--farms-q nan: must be"),
    (lambda: FarmsSettings(steps=1), "steps", "steps=1: must be at least 2", "--farms-steps 1: must be"),
    (lambda: SparsitySettings(target=1.5), "target", "target=1.5: must be a sparsity", "--target 1.5: must be"),
    (lambda: SparsitySettings(0.5, epsilon=1.0), "epsilon", "epsilon=1.0: must be in [0, 1)", "--epsilon 1.0: must be"),
    (lambda: SparsitySettings(0.5, granularity="row"), "granularity", "granularity='row': must be one of block, matrix",
     "--granularity row: must be"),
    (lambda: SparsitySettings(0.5, metric="beta"), "metric", "metric='beta': must be one of alpha, alpha_farms",
     "--metric beta: must be"),
    (lambda: LrSettings(base_lr=-1.0), "base_lr", "base_lr=-1.0: must be a positive finite number", "--base-lr -1.0: must be"),
    (lambda: LrSettings(0.1, map="cube"), "map", "map='cube': must be one of", "--map cube: must be"),
    (lambda: LrSettings(0.1, unit="row"), "unit", "unit='row': must be one of layer, block", "--unit row: must be"),
    (lambda: LrSettings(0.1, min_ratio=2.0), "min_ratio", "min_ratio=2.0: must be positive", "--min-ratio 2.0: must be"),
    (lambda: LrSettings(0.1, epochs=0), "epochs", "epochs=0: must be in [1, 10000]", "--epochs 0: must be"),
    (lambda: LrSettings(0.1, schedule="step"), "schedule", "schedule='step': must be one of", "--schedule step: must be"),
    (lambda: ExpertSettings(total=0), "total", "total=0: must be at least 1", "--total 0: must be"),
    (lambda: ExpertSettings(total=2.5), "total", "total=2.5: must be a whole number", "--total 2.5: must be"),
    (lambda: ExpertSettings(beta=float("inf")), "beta", "beta=inf: must be a number in", "--beta inf: must be"),
    (lambda: CalibrationSettings(TEXT, samples=0), "samples", "samples=0: must be at least 1", "--samples 0: must be at least 1"),
    (lambda: CalibrationSettings(TEXT, seq_len=1), "seq_len", "seq_len=1: must be at least 2 tokens", "--seq-len 1: must be"),
    (lambda: OwlSettings(m=0.0), "m", "m=0.0: must be positive", "--owl-m 0.0: must be positive"),
    (lambda: OwlSettings(lam=0.5), "lam", "lam=0.5: must be in [0, 0.5)", "--owl-lambda 0.5: must be in [0, 0.5)"),
    (lambda: PruneSettings(target=0.5, method="sparsegpt"), "method", "method='sparsegpt': must be one of magnitude, wanda",
     "--method sparsegpt: must be"),
    (lambda: PruneSettings(target=1.5), "target", "target=1.5: must be a sparsity strictly between 0 and 1",
     "--target 1.5: must be a sparsity"),
    (lambda: PruneSettings(target=None, allocation="uniform"), "target", "target=None: is required with the uniform allocation",
     "--target is required with the uniform allocation"),
    (lambda: PruneSettings(target=0.5, method="wanda"), "calibration", "calibration=None: is required with the wanda method",
     "--calibration is required with the wanda method"),
    (lambda: PruneSettings(target=0.5, allocation="owl"), "calibration", "calibration=None: is required with the owl allocation",
     "--calibration is required with the owl allocation"),
    (lambda: PruneSettings(target=0.5, device="tpu"), "device", "device='tpu': must be one of", "--device tpu: must be"),
    (lambda: PruneSettings(target=0.5, epsilon=1.5), "epsilon", "epsilon=1.5: must be in [0, 1)", "--epsilon 1.5: must be"),
    (lambda: PruneSettings(target=0.5, granularity="row"), "granularity", "granularity='row': must be one of",
     "--granularity row: must be"),
    (lambda: PerplexitySettings(seq_len=2), "seq_len", "seq_len=2: must be at least 3 tokens", "--seq-len 2: must be"),
    (lambda: PerplexitySettings(max_tokens=0), "max_tokens", "max_tokens=0: must be positive", "--max-tokens 0: must be"),
    (lambda: PerplexitySettings(device="tpu"), "device", "device='tpu': must be one of auto, cpu, cuda", "--device tpu: must be"),
]


@pytest.mark.parametrize(("make", "parameter", "python_message", "flag_message"), REFUSALS,
                         ids=lambda value: value if isinstance(value, str) and value.startswith("--") else "")
def test_each_settings_class_names_the_parameter_and_the_cli_the_flag(make, parameter, python_message, flag_message):
    with pytest.raises(InvalidSetting) as raised:
        make()
    error = raised.value
    assert error.parameter == parameter
    assert str(error).startswith(python_message), str(error)
    assert "--" not in str(error)  # the library never speaks in flags
    assert "\n" not in str(error) and isinstance(error, HtsrError)
    assert as_flag(error).startswith(flag_message), as_flag(error)


@pytest.mark.parametrize(("args", "message"), [
    (["prune", TINY_LLAMA, "--target", "0.5", "--owl-m", "0", "-o", "out"], "--owl-m 0.0: must be positive"),
    (["prune", TINY_LLAMA, "--target", "0.5", "--owl-lambda", "0.7", "-o", "out"], "--owl-lambda 0.7: must be in [0, 0.5)"),
    (["prune", TINY_LLAMA, "--target", "0.5", "--method", "wanda", "--calibration", "c.txt", "--samples", "0", "-o", "out"],
     "--samples 0: must be at least 1"),
    (["prune", TINY_LLAMA, "--target", "0.5", "--epsilon", "1.5", "-o", "out"], "--epsilon 1.5: must be in [0, 1)"),
    (["eval", "perplexity", TINY_LLAMA, "--text", "c.txt", "--seq-len", "2"], "--seq-len 2: must be at least 3 tokens"),
    (["analyze", TINY_LLAMA, "--small-n", "ww", "--xmin", "median"],
     "--small-n ww: WeightWatcher's small-N path chooses xmin its own way: use it with xmin=ks, not median"),
    (["allocate", "sparsity", TINY_LLAMA, "--target", "0.5", "--small-n", "ww"],
     "--small-n ww: WeightWatcher's small-N path chooses xmin its own way: use it with xmin=ks, not peak"),
    (["eval", "perplexity", TINY_LLAMA, "--text", "c.txt", "--max-tokens", "0"], "--max-tokens 0: must be positive"),
])
def test_the_command_line_refuses_before_reading_anything(cli, args, message, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result = cli(*args)
    assert result.exit_code == 2
    assert result.stderr == f"htsr: error: {message}\n"
    assert list(tmp_path.iterdir()) == []
