"""How well a language model predicts a text: perplexity (`htsr eval perplexity`).

Causal LMs (GPT-2, LLaMA, Mistral, Qwen, ...) follow the protocol the pruning
papers report on WikiText (Wanda, SparseGPT, OWL, AlphaPruning): the whole text
is tokenized as one sequence (with the tokenizer's own BOS), cut into
non-overlapping windows of `seq_len` tokens (a shorter tail is dropped), and
each window is scored on its own, token t from tokens 0..t-1 of its window:

    perplexity = exp(sum of NLL / tokens predicted),  tokens predicted = windows * (seq_len - 1)

Masked LMs (BERT and kin) have no left-to-right probability, so they get the
pseudo-perplexity of Salazar et al. (2020): each window of seq_len - 2 tokens
is wrapped in [CLS] ... [SEP], every token is masked in turn and scored from
all the others, and PPPL = exp(sum of NLL / tokens scored). That costs one
forward pass per token (batched), far more than a causal pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from htsr_cli import __version__
from htsr_cli.errors import HtsrError, InvalidSetting, brief
from htsr_cli.lm.language_models import (
    check_config_against_weights,
    check_seq_len,
    load_config,
    load_tokenizer,
    model_directory,
    quiet_transformers,
    read_text,
    run_dtype,
    token_ids,
)
from htsr_cli.settings import DEVICES, ProgressCallback, require_int
from htsr_cli.spectra.solver import resolve_device

SCHEMA = "htsr.perplexity/1"
PURPOSE = "perplexity"
CAUSAL, MASKED = "causal", "masked"
_MASKED_BATCH = 32  # masked copies of a window per forward pass


@dataclass(frozen=True)
class PerplexitySettings:
    seq_len: int = 512
    max_tokens: int | None = None  # score only the first N tokens of the text
    device: str = "auto"

    def __post_init__(self) -> None:
        require_int(self.seq_len, "seq_len")
        if self.seq_len < 3:
            raise InvalidSetting("seq_len", self.seq_len, "must be at least 3 tokens")
        if self.max_tokens is not None:
            require_int(self.max_tokens, "max_tokens")
            if self.max_tokens < 1:
                raise InvalidSetting("max_tokens", self.max_tokens, "must be positive")
        if self.device not in DEVICES:
            raise InvalidSetting("device", self.device, f"must be one of {', '.join(DEVICES)}")


def objective_of(config: Any) -> str:
    """causal or masked, from the saved architecture; an encoder (BERT) counts as masked."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    architecture = (getattr(config, "architectures", None) or [""])[0]
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return CAUSAL
    if architecture.endswith("ForMaskedLM"):
        return MASKED
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return MASKED  # BERT-like types also have a causal head class, but were trained as masked LMs
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return CAUSAL
    raise HtsrError(f"{architecture or config.model_type} is neither a causal nor a masked language model")


def evaluate_perplexity(
    model_source: str, text_path: Path, settings: PerplexitySettings, progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """The `htsr.perplexity/1` result of `model_source` (a directory or cached hub id) on a text file."""
    text = read_text(text_path, "--text")
    directory = model_directory(model_source, PURPOSE)
    config = load_config(directory, model_source, PURPOSE)
    objective = objective_of(config)
    check_seq_len(config, settings.seq_len, model_source)
    tokenizer = load_tokenizer(directory, model_source, PURPOSE)
    device = resolve_device(settings.device)
    dtype = run_dtype(device, getattr(config, "dtype", None))
    _check_config(directory, model_source, config, objective, dtype)
    model = _load_model(directory, model_source, objective, dtype).to(device).eval()
    ids = token_ids(tokenizer, text, special_tokens=objective == CAUSAL)[: settings.max_tokens]
    window = settings.seq_len if objective == CAUSAL else settings.seq_len - 2
    windows = len(ids) // window
    if windows == 0:
        raise HtsrError(
            f"--text {text_path}: {len(ids):,} tokens, fewer than one window of {window} (lower --seq-len)"
        )
    batches = torch.tensor(ids[: windows * window], dtype=torch.long).view(windows, window)
    total, scored = 0.0, 0
    with torch.inference_mode():
        for index in range(windows):
            if progress is not None:
                progress(index, windows, f"window {index + 1}")
            if objective == CAUSAL:
                nll, count = causal_nll(model, batches[index].to(device))
            else:
                nll, count = masked_nll(model, tokenizer, batches[index].to(device), model_source)
            total += nll
            scored += count
    if progress is not None:
        progress(windows, windows, "")
    mean = total / scored
    return {
        "schema": SCHEMA,
        "htsr_version": __version__,
        "model": model_source,
        "text": str(text_path),
        "objective": objective,
        "metric": "perplexity" if objective == CAUSAL else "pseudo-perplexity",
        "protocol": (
            "non-overlapping windows, each token predicted from the tokens before it in its window"
            if objective == CAUSAL
            else "each token masked in turn and predicted from the rest of its [CLS] window [SEP]"
        ),
        "seq_len": settings.seq_len,
        "windows": windows,
        "tokens_scored": scored,
        "mean_nll": mean,
        "perplexity": math.exp(mean),
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
    }


def _check_config(directory: Path, source: str, config: Any, objective: str, dtype: torch.dtype) -> None:
    """The config against the weights on disk (headers only), before transformers builds anything from it."""
    import transformers

    from htsr_cli.checkpoints import open_checkpoint

    auto = transformers.AutoModelForCausalLM if objective == CAUSAL else transformers.AutoModelForMaskedLM
    with open_checkpoint(str(directory)) as checkpoint:
        shapes = {info.key: info.shape for info in checkpoint.stored()}
    check_config_against_weights(lambda: auto.from_config(config, dtype=dtype, trust_remote_code=False), config, shapes, source)


def _load_model(directory: Path, source: str, objective: str, dtype: torch.dtype) -> torch.nn.Module:
    import transformers

    auto = transformers.AutoModelForCausalLM if objective == CAUSAL else transformers.AutoModelForMaskedLM
    try:
        with quiet_transformers():
            model, info = auto.from_pretrained(
                directory, dtype=dtype, local_files_only=True, trust_remote_code=False, output_loading_info=True
            )
    except Exception as error:
        raise HtsrError(f"{source}: transformers cannot load it as a {objective} LM ({brief(error)})") from error
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        # A random head would make any number meaningless (all-MiniLM-L6-v2 ships its encoder only).
        raise HtsrError(
            f"{source}: has no weights for {missing[0]!r} (and {len(missing) - 1} more) of its {objective} LM head; "
            f"{'pseudo-' if objective == MASKED else ''}perplexity is not defined without a trained head"
        )
    return model


def causal_nll(model: torch.nn.Module, window: torch.Tensor) -> tuple[float, int]:
    """Sum of -log p(token t | tokens < t) over t = 1..L-1 of one window [L], and the count L - 1."""
    logits = model(input_ids=window.unsqueeze(0)).logits[0].float()  # [L, vocab]
    nll = torch.nn.functional.cross_entropy(logits[:-1], window[1:], reduction="sum")
    return float(nll), window.numel() - 1


def masked_nll(model: torch.nn.Module, tokenizer: Any, window: torch.Tensor, source: str) -> tuple[float, int]:
    """Sum of -log p(token i | all others) with token i masked, over every token of one window [L]."""
    if tokenizer.mask_token_id is None:
        raise HtsrError(f"{source}: its tokenizer has no mask token, so pseudo-perplexity cannot be computed")
    wrap = [tokenizer.cls_token_id, tokenizer.sep_token_id]
    sequence = window
    if None not in wrap:
        sequence = torch.cat([window.new_tensor(wrap[:1]), window, window.new_tensor(wrap[1:])])
    offset = 1 if None not in wrap else 0
    total = 0.0
    for start in range(0, window.numel(), _MASKED_BATCH):
        positions = torch.arange(start, min(start + _MASKED_BATCH, window.numel()), device=window.device) + offset
        batch = sequence.repeat(positions.numel(), 1)  # [B, L']: row b masks position positions[b]
        rows = torch.arange(positions.numel(), device=window.device)
        batch[rows, positions] = tokenizer.mask_token_id
        logits = model(input_ids=batch).logits.float()  # [B, L', vocab]
        log_probs = torch.log_softmax(logits[rows, positions], dim=-1)  # [B, vocab]
        total -= float(log_probs[rows, sequence[positions]].sum())
    return total, window.numel()
