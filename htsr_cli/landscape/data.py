"""Labelled samples from a file, as batches a classifier can run on; and whole-model torch files.

A data file holds one sample per row/entry with an integer class label:
- .npz: features under x / X / features / inputs / pixel_values, labels under y / labels / label / targets
  (or the --label-column name);
- .csv: a header row; the label column (default `label`); every other column a numeric feature, or
  a `text` / `sentence` column of texts for a sequence classifier;
- .jsonl: one JSON object per line with the label key and a `features` / `x` / `inputs` /
  `pixel_values` list, a `text` / `sentence` string, or otherwise numeric values under other keys;
- a directory written by `datasets.Dataset.save_to_disk` (needs the `datasets` package), with the
  same column names.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from htsr_cli.errors import HtsrError
from htsr_cli.landscape.objective import Batch, Batches, Objective

FEATURE_KEYS = ("x", "X", "features", "inputs", "pixel_values")
LABEL_KEYS = ("y", "labels", "label", "targets")
TEXT_KEYS = ("text", "sentence")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class Table:
    """The samples of a data file: numeric features [N, ...] or N texts, and N integer labels."""

    source: str  # as the user named it, for messages
    features: np.ndarray | list[str]
    labels: np.ndarray

    @property
    def is_text(self) -> bool:
        return isinstance(self.features, list)

    def __len__(self) -> int:
        return len(self.labels)


def _labels(values: Any, source: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise HtsrError(f"{source}: labels must be integer class indices, found {array[~(array == np.round(array))][:1].tolist() or 'nan'}")
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise HtsrError(f"{source}: labels must be integer class indices, found {array.dtype} values")
    return array.astype(np.int64).reshape(-1)


def _numeric(values: Any, source: str, what: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise HtsrError(f"{source}: {what} are not all numbers (or not all of one shape)") from None


def _from_columns(columns: dict[str, list], label: str, source: str) -> Table:
    """A table from named columns (a datasets directory, or JSON objects turned into columns)."""
    label_key = next((key for key in (label, *LABEL_KEYS) if key in columns), None)
    if label_key is None:
        raise HtsrError(f"{source}: no label column ({label!r}; or one of {', '.join(LABEL_KEYS)}); name it with --label-column")
    labels = _labels(columns[label_key], source)
    text_key = next((key for key in TEXT_KEYS if key in columns), None)
    if text_key is not None:
        texts = columns[text_key]
        if not all(isinstance(text, str) for text in texts):
            raise HtsrError(f"{source}: column {text_key!r} must hold strings")
        return Table(source, list(texts), labels)
    feature_key = next((key for key in FEATURE_KEYS if key in columns), None)
    if feature_key is not None:
        return Table(source, _numeric(columns[feature_key], source, f"the values of {feature_key!r}"), labels)
    others = [key for key in columns if key != label_key]
    if not others:
        raise HtsrError(f"{source}: no feature columns besides the label {label_key!r}")
    return Table(source, _numeric([columns[key] for key in others], source, "the feature columns").T.copy(), labels)


def _read_csv(path: Path, label: str, source: str) -> Table:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        raise HtsrError(f"{source}: holds no samples")
    header, body = rows[0], [row for row in rows[1:] if row]
    if not body:
        raise HtsrError(f"{source}: holds no samples")
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise HtsrError(f"{source}: line {number} has {len(row)} fields, the header {len(header)}")
    columns: dict[str, list] = {name: [row[i] for row in body] for i, name in enumerate(header)}
    for name, values in columns.items():
        if name in TEXT_KEYS:
            continue
        try:
            columns[name] = [float(value) for value in values]
        except ValueError:
            bad = next(i for i, value in enumerate(values) if not _is_number(value))
            raise HtsrError(f"{source}: column {name!r} line {bad + 2}: {values[bad][:40]!r} is not a number") from None
    return _from_columns(columns, label, source)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_jsonl(path: Path, label: str, source: str) -> Table:
    entries = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise HtsrError(f"{source}: line {number} is not JSON ({error.msg})") from None
            if not isinstance(entry, dict):
                raise HtsrError(f"{source}: line {number} is not a JSON object")
            entries.append(entry)
    if not entries:
        raise HtsrError(f"{source}: holds no samples")
    keys = list(entries[0])
    for number, entry in enumerate(entries, start=1):
        if set(entry) != set(keys):
            raise HtsrError(f"{source}: entry {number} has keys {sorted(entry)}, the first {sorted(keys)}")
    return _from_columns({key: [entry[key] for entry in entries] for key in keys}, label, source)


def _read_npz(path: Path, label: str, source: str) -> Table:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise HtsrError(f"{source}: not a readable .npz archive ({' '.join(str(error).split())[:120]})") from None
    with archive:
        names = list(archive.files)
        feature = next((key for key in FEATURE_KEYS if key in names), None)
        target = next((key for key in (label, *LABEL_KEYS) if key in names), None)
        if feature is None or target is None:
            raise HtsrError(
                f"{source}: needs a features array ({', '.join(FEATURE_KEYS)}) and a labels array "
                f"({', '.join(LABEL_KEYS)}); it holds {', '.join(names) or 'nothing'}"
            )
        features, labels = archive[feature], _labels(archive[target], source)
    if len(labels) == 0 or features.shape[0] == 0:
        raise HtsrError(f"{source}: holds no samples")
    if features.shape[0] != len(labels):
        raise HtsrError(f"{source}: {features.shape[0]} samples of features but {len(labels)} labels")
    return Table(source, _numeric(features, source, f"the values of {feature!r}"), labels)


def _read_saved_dataset(path: Path, label: str, source: str) -> Table:
    try:
        import datasets
    except ImportError:
        raise HtsrError(f"{source}: reading a datasets.save_to_disk directory needs the `datasets` package (pip install datasets)") from None
    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise HtsrError(f"{source}: not a datasets.save_to_disk directory ({' '.join(str(error).split())[:120]})") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise HtsrError(f"{source}: holds the splits {', '.join(dataset)}; give the directory of one split")
    if len(dataset) == 0:
        raise HtsrError(f"{source}: holds no samples")
    return _from_columns(dataset[:], label, source)


def read_table(path: Path, label: str = "label", option: str = "--data") -> Table:
    """The samples of a data file (see the module docstring for the formats)."""
    source = f"{option} {path}"
    if not path.exists():
        raise HtsrError(f"{source}: no such file or directory")
    if path.is_dir():
        return _read_saved_dataset(path, label, source)
    if path.stat().st_size == 0:
        raise HtsrError(f"{source}: the file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            table = _read_npz(path, label, source)
        elif suffix == ".csv":
            table = _read_csv(path, label, source)
        elif suffix in (".jsonl", ".json"):
            table = _read_jsonl(path, label, source)
        else:
            raise HtsrError(f"{source}: unknown data format {suffix or '(no suffix)'}; use .npz, .csv, .jsonl or a datasets directory")
    except UnicodeDecodeError as error:
        raise HtsrError(f"{source}: not UTF-8 text (byte {error.start})") from None
    if len(table) == 0:
        raise HtsrError(f"{source}: holds no samples")
    return table


def numeric_batches(
    table: Table, batch_size: int, max_batches: int | None, dtype: torch.dtype, input_key: str | None = None
) -> list[Batch]:
    """The first `max_batches` batches of a numeric table, as (features, labels) tensors; with
    `input_key`, the features go in a keyword mapping (`{"pixel_values": x}` for transformers)."""
    if table.is_text:
        raise HtsrError(f"{table.source}: holds texts; this model needs numeric features")
    count = -(-len(table) // batch_size)
    if max_batches is not None:
        count = min(count, max_batches)
    batches: list[Batch] = []
    for index in range(count):
        rows = slice(index * batch_size, (index + 1) * batch_size)
        features = torch.from_numpy(np.ascontiguousarray(table.features[rows])).to(dtype)
        labels = torch.from_numpy(table.labels[rows])
        batches.append(({input_key: features} if input_key else features, labels))
    return batches


def check_labels(table: Table, classes: int, model: str) -> None:
    """Every label is a class index of the model's output."""
    low, high = int(table.labels.min()), int(table.labels.max())
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise HtsrError(f"{table.source}: label {bad} is out of range for {model}, which has {classes} classes (0..{classes - 1})")


def output_classes(model: nn.Module, objective: Objective, batches: Batches, data: str, name: str) -> int:
    """Runs the first batch: one line when the data does not fit the model, else its class count."""
    inputs, _ = next(iter(batches))
    try:
        with torch.no_grad():
            logits = objective.forward(model.eval(), inputs)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        shape = tuple(next(iter(inputs.values())).shape[1:]) if isinstance(inputs, dict) else tuple(inputs.shape[1:])
        detail = " ".join(str(error).split())[:160]
        raise HtsrError(f"{data}: samples of shape {shape} do not fit {name} (its forward pass fails: {detail})") from None
    if logits.dim() < 2:
        raise HtsrError(f"{name}: its output has shape {tuple(logits.shape)}, not class scores per sample")
    return int(logits.shape[-1])


def load_torch_model(path: Path, trust_pickle: bool) -> nn.Module:
    """A whole model saved with torch.save(model); unpickling runs code, so only with consent."""
    if not trust_pickle:
        raise HtsrError(
            f"{path}: loading a whole model from a torch file unpickles it, which can run any code; "
            "pass --trust-pickle if you trust the file"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a corrupt or foreign file: any unpickling error, in one line
        raise HtsrError(f"{path}: torch cannot load it ({type(error).__name__}: {' '.join(str(error).split())[:120]})") from error
    if not isinstance(loaded, nn.Module):
        raise HtsrError(
            f"{path}: holds {type(loaded).__name__} data, not a whole model; a state dict (weights without the "
            "architecture) cannot run a forward pass: save the model with torch.save(model), or give a Hugging Face directory"
        )
    return loaded
