"""Where the tests find the Model Diagnosis Dataset's two tables (beside the project, or HTSR_MD_TREE_DATA)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

DATA = Path(os.environ.get("HTSR_MD_TREE_DATA", REPO.parent / "shared" / "data" / "md-tree"))
needs_data = pytest.mark.skipif(
    not (DATA / "dataframe_normal_public.csv").is_file(),
    reason=f"the Model Diagnosis Dataset is not at {DATA} (set HTSR_MD_TREE_DATA)",
)

COLUMNS = [
    "data", "width", "bs", "log_data_amount", "log_para_amount", "train_error", "train_loss", "test_loss",
    "test_error", "mode_connectivity_peak", "hessian_t", "bs_failure", "width_vs_batch", "data_vs_batch",
]


def synthetic_population(path, seed: int) -> None:
    """A 3 x 4 x 3 grid (data x width x batch size) whose labels follow the features loosely, with label noise."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for data in (1, 2, 3):
            for width in (8, 16, 32, 64):
                for bs in (16, 128, 1024):
                    error = max(0.0, rng.normal(30 / width + 3 / data, 0.5))
                    peak = -abs(rng.normal(40 / width, 2))
                    hessian = rng.normal(4 + np.log2(bs) / 3, 0.3)
                    temperature = "small" if bs == 1024 or rng.random() < 0.1 else "large"
                    if bs == 128 and width == 32:
                        temperature = "optimal"
                    writer.writerow([
                        data, width, bs, np.log(5000 * data), np.log(1000 * width), error, error / 20,
                        error / 10 + 1, error + 10, peak, hessian, temperature,
                        "width" if width < 32 else "batch", "data" if data == 1 else "batch",
                    ])
