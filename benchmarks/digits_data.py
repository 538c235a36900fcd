"""scikit-learn's bundled handwritten digits (no download), split once for the benchmarks that train on them.

The 1,797 8x8 images become 64 features in [0, 1]; a fixed permutation (seed 1234) puts the
first TEST_SAMPLES in the test split, so every benchmark and every run sees the same split.
"""

from __future__ import annotations

import torch

TEST_SAMPLES = 600


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train features, train labels, test features, test labels)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy(data.data / 16.0).float()
    y = torch.from_numpy(data.target).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    test, train = order[:TEST_SAMPLES], order[TEST_SAMPLES:]
    return x[train], y[train], x[test], y[test]
