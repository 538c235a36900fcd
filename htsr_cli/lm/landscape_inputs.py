"""The models and data `htsr landscape` measures, from what a user has on disk.

- a whole-model torch file (only with --trust-pickle) on a --data file of numeric features;
- a Hugging Face sequence classifier on --data texts, an image classifier on --data pixel arrays
  [N, channels, height, width], or a causal LM on a --text file cut into windows of --seq-len
  tokens as `htsr eval perplexity` reads it (the tokenizer's own BOS, the tail dropped).

Models run in float32 whatever their stored precision (second derivatives in half precision lose
most of their digits), with eager attention (the fused kernels have no double backward).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from htsr_cli.errors import HtsrError
from htsr_cli.landscape.data import (
    PICKLE_SUFFIXES,
    Table,
    check_labels,
    load_torch_model,
    numeric_batches,
    output_classes,
    read_table,
)
from htsr_cli.landscape.measure import Subject
from htsr_cli.landscape.objective import CLASSIFICATION, NEXT_TOKEN, Batch, Batches, Objective
from htsr_cli.lm.language_models import (
    load_config,
    load_tokenizer,
    max_positions,
    model_directory,
    quiet_transformers,
    read_text,
    token_ids,
)
from htsr_cli.lm.perplexity import CAUSAL, objective_of

PURPOSE = "landscape"
SEQUENCE, IMAGE = "ForSequenceClassification", "ForImageClassification"


@dataclass(frozen=True)
class InputSettings:
    data: Path | None = None  # labelled samples for a classifier
    text: Path | None = None  # text for a causal LM
    label_column: str = "label"
    batch_size: int = 32
    seq_len: int = 128  # tokens per window (causal LM) or the longest tokenized text (sequence classifier)
    max_batches: int | None = None
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise HtsrError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.seq_len < 2:
            raise HtsrError(f"--seq-len must be at least 2 tokens, got {self.seq_len}")
        if self.max_batches is not None and self.max_batches < 1:
            raise HtsrError(f"--max-batches must be at least 1, got {self.max_batches}")
        if (self.data is None) == (self.text is None):
            raise HtsrError("give --data FILE (classifiers: labelled samples) or --text FILE (causal LMs), one of them")


@dataclass(frozen=True)
class Workload:
    subjects: list[Subject]
    objective: Objective
    batches: Batches
    data: dict[str, Any]  # what the document says about the data


def prepare(sources: list[str], settings: InputSettings, device: torch.device) -> Workload:
    """Load every model and the batches they are measured on."""
    if all(Path(source).is_file() and Path(source).suffix.lower() in PICKLE_SUFFIXES for source in sources):
        return _torch_models(sources, settings, device)
    if any(Path(source).is_file() for source in sources):
        single = next(source for source in sources if Path(source).is_file())
        if Path(single).suffix.lower() not in PICKLE_SUFFIXES:
            raise HtsrError(
                f"{single}: a weights file (state dict) cannot run a forward pass; give a whole-model torch "
                "file (torch.save(model)) with --trust-pickle, or a Hugging Face directory"
            )
        raise HtsrError("give models of one kind: all whole-model torch files, or all Hugging Face directories")
    return _transformers_models(sources, settings, device)


def _describe(settings: InputSettings, path: Path, samples: int, batches: list[Batch], unit: str) -> dict[str, Any]:
    return {
        "path": str(path),
        "samples": samples,
        "unit": unit,
        "batch_size": settings.batch_size,
        "batches": len(batches),
        "used": sum(int(targets.shape[0]) for _, targets in batches),
        "max_batches": settings.max_batches,
    }


def _torch_models(sources: list[str], settings: InputSettings, device: torch.device) -> Workload:
    if settings.data is None:
        raise HtsrError("a whole-model torch file is measured on --data FILE (labelled samples), not --text")
    models = [load_torch_model(Path(source), settings.trust_pickle).float().to(device) for source in sources]
    table = read_table(settings.data, settings.label_column)
    batches = numeric_batches(table, settings.batch_size, settings.max_batches, torch.float32)
    stream = Batches(batches, device=device)
    for source, model in zip(sources, models):
        classes = output_classes(model, CLASSIFICATION, stream, table.source, source)
        check_labels(table, classes, source)
    return Workload(
        [Subject(source, model) for source, model in zip(sources, models)],
        CLASSIFICATION,
        stream,
        _describe(settings, settings.data, len(table), batches, "samples"),
    )


def _architecture(config: Any) -> str:
    return (getattr(config, "architectures", None) or [""])[0]


def _load(directory: Path, source: str, auto: Any, what: str) -> nn.Module:
    try:
        with quiet_transformers():
            model, info = auto.from_pretrained(
                directory, dtype=torch.float32, local_files_only=True, trust_remote_code=False, output_loading_info=True,
                attn_implementation="eager",  # fused attention kernels have no second derivative (Hessian-vector products)
            )
    except Exception as error:  # transformers raises many types for a model it cannot build
        raise HtsrError(f"{source}: transformers cannot load it as a {what} ({type(error).__name__}: {' '.join(str(error).split())[:160]})") from error
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise HtsrError(f"{source}: has no weights for {missing[0]!r} (and {len(missing) - 1} more); the landscape of a random head means nothing")
    return model


def _transformers_models(sources: list[str], settings: InputSettings, device: torch.device) -> Workload:
    import transformers

    directories = [model_directory(source, PURPOSE) for source in sources]
    configs = [load_config(directory, source, PURPOSE) for directory, source in zip(directories, sources)]
    first, config = sources[0], configs[0]
    architecture = _architecture(config)
    if architecture.endswith(SEQUENCE) or architecture.endswith(IMAGE):
        if settings.data is None:
            raise HtsrError(f"{first} is a classifier ({architecture}): give its labelled samples with --data FILE, not --text")
        table = read_table(settings.data, settings.label_column)
        check_labels(table, int(config.num_labels), first)
        if architecture.endswith(SEQUENCE):
            auto, what = transformers.AutoModelForSequenceClassification, "sequence classifier"
            tokenizer = load_tokenizer(directories[0], first, PURPOSE)
            batches = _text_batches(table, tokenizer, settings, max_positions(config))
        else:
            auto, what = transformers.AutoModelForImageClassification, "image classifier"
            _check_image_shape(table, config, first)
            batches = numeric_batches(table, settings.batch_size, settings.max_batches, torch.float32, "pixel_values")
        models = [_load(d, s, auto, what).to(device) for d, s in zip(directories, sources)]
        return Workload(
            [Subject(s, m) for s, m in zip(sources, models)],
            CLASSIFICATION,
            Batches(batches, device=device),
            _describe(settings, settings.data, len(table), batches, "samples"),
        )
    if objective_of(config) != CAUSAL:
        raise HtsrError(f"{first} is a masked LM ({architecture or config.model_type}); landscape runs causal LMs and classifiers")
    if settings.text is None:
        raise HtsrError(f"{first} is a causal LM: give the text it is measured on with --text FILE, not --data")
    limit = max_positions(config)
    if limit is not None and settings.seq_len > limit:
        raise HtsrError(f"--seq-len {settings.seq_len} is longer than {first} can take ({limit} positions)")
    tokenizer = load_tokenizer(directories[0], first, PURPOSE)
    ids = token_ids(tokenizer, read_text(settings.text, "--text"), special_tokens=True)
    windows = len(ids) // settings.seq_len
    if windows == 0:
        raise HtsrError(f"--text {settings.text}: {len(ids):,} tokens, fewer than one window of {settings.seq_len} (lower --seq-len)")
    vocabulary = int(config.vocab_size)
    if max(ids) >= vocabulary:
        raise HtsrError(f"--text {settings.text}: token id {max(ids)} is outside {first}'s vocabulary of {vocabulary}")
    grid = torch.tensor(ids[: windows * settings.seq_len], dtype=torch.long).view(windows, settings.seq_len)
    batches: list[Batch] = []
    for start in range(0, windows, settings.batch_size):
        if settings.max_batches is not None and len(batches) == settings.max_batches:
            break
        window = grid[start : start + settings.batch_size]
        batches.append(({"input_ids": window}, window))
    models = [_load(d, s, transformers.AutoModelForCausalLM, "causal LM").to(device) for d, s in zip(directories, sources)]
    description = _describe(settings, settings.text, windows, batches, "windows")
    description["seq_len"] = settings.seq_len
    return Workload([Subject(s, m) for s, m in zip(sources, models)], NEXT_TOKEN, Batches(batches, device=device), description)


def _text_batches(table: Table, tokenizer: Any, settings: InputSettings, limit: int | None) -> list[Batch]:
    if not table.is_text:
        raise HtsrError(f"{table.source}: holds numeric features; a sequence classifier needs a `text` column")
    length = min(settings.seq_len, limit) if limit else settings.seq_len
    batches: list[Batch] = []
    for start in range(0, len(table), settings.batch_size):
        if settings.max_batches is not None and len(batches) == settings.max_batches:
            break
        texts = table.features[start : start + settings.batch_size]
        with quiet_transformers():
            encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=length, return_tensors="pt")
        batches.append((dict(encoded), torch.from_numpy(table.labels[start : start + settings.batch_size])))
    return batches


def _check_image_shape(table: Table, config: Any, source: str) -> None:
    if table.is_text:
        raise HtsrError(f"{table.source}: holds texts; an image classifier needs pixel arrays [N, channels, height, width]")
    size = getattr(config, "image_size", None)
    height, width = (size, size) if isinstance(size, int) else tuple(size or (None, None))
    expected = (getattr(config, "num_channels", None), height, width)
    shape = tuple(table.features.shape[1:])
    if len(shape) != 3 or any(e is not None and e != s for e, s in zip(expected, shape)):
        raise HtsrError(f"{table.source}: samples of shape {shape} do not fit {source}, which takes pixel_values of shape {expected}")
