"""Two seeds of a small MLP trained on scikit-learn's bundled digits (1,797 8x8 images, no download),
saved as whole-model torch files, with the data as .npz / .csv / .jsonl: what a user of
`htsr landscape` would have. A few seconds of CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def train_mlp(features: np.ndarray, labels: np.ndarray, seed: int, hidden: int = 32, epochs: int = 15) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        permutation = torch.randperm(len(y), generator=order)
        for start in range(0, len(y), 64):
            rows = permutation[start : start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
            optimizer.step()
    return model.eval()


def write_digits(folder: Path) -> dict[str, Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-32-10 MLP: a thread pool costs more than it saves
    try:
        return _write_digits(folder)
    finally:
        torch.set_num_threads(threads)


def _write_digits(folder: Path) -> dict[str, Path]:
    features, labels = digits_arrays()
    paths = {"npz": folder / "digits.npz", "csv": folder / "digits.csv", "jsonl": folder / "digits.jsonl"}
    np.savez(paths["npz"], x=features, y=labels)
    header = ",".join([f"pixel{i}" for i in range(64)] + ["label"])
    rows = [",".join([*(f"{v:g}" for v in row), str(label)]) for row, label in zip(features[:200], labels[:200])]
    paths["csv"].write_text("\n".join([header, *rows]) + "\n")
    paths["jsonl"].write_text("".join(json.dumps({"features": row.tolist(), "label": int(label)}) + "\n" for row, label in zip(features[:200], labels[:200])))
    for seed in (0, 1):
        paths[f"seed{seed}"] = folder / f"mlp-seed{seed}.pth"
        torch.save(train_mlp(features, labels, seed), paths[f"seed{seed}"])
    return paths
