"""Pruning masks against hand-made cases: magnitude (ties by position), row-balanced, Wanda scores, outlier ratios."""

from __future__ import annotations

import pytest
import torch

from htsr_cli.pruning.masks import magnitude_mask, outlier_ratio, row_balanced_mask, wanda_scores

# ---------------------------------------------------------------- pure numbers


def test_magnitude_mask_takes_the_smallest_and_breaks_ties_by_position():
    weight = torch.tensor([[0.5, -0.1, 0.3], [0.1, -0.7, 0.1]])
    mask = magnitude_mask(weight, 3)
    # |w| = .5 .1 .3 / .1 .7 .1: three tie at 0.1, all taken; then one more would be 0.3
    assert mask.tolist() == [[False, True, False], [True, False, True]]
    assert magnitude_mask(weight, 2).tolist() == [[False, True, False], [True, False, False]]
    assert magnitude_mask(weight, 0).sum() == 0
    assert magnitude_mask(weight, 6).all()


def test_magnitude_mask_is_exact_on_bfloat16_with_many_ties():
    weight = (torch.randn(64, 48, generator=torch.Generator().manual_seed(1)) * 4).round().to(torch.bfloat16)
    for count in (1, 777, 1536, 3071):
        mask = magnitude_mask(weight, count)
        assert int(mask.sum()) == count
        assert weight[mask].abs().max() <= weight[~mask].abs().min()


def test_row_balanced_mask_spreads_the_count_over_rows():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.5, 0.6, 9.0, 0.7], [8.0, 7.0, 6.0, 5.0]])
    mask = row_balanced_mask(scores, 5)  # 1 per row, and 2 rows get a second
    assert mask.sum(dim=1).tolist() == [2, 2, 1]  # second-smallest: row0 2.0, row1 0.6, row2 6.0
    assert mask.tolist() == [[False, True, False, True], [True, True, False, False], [False, False, False, True]]
    assert row_balanced_mask(scores, 12).all()


def test_wanda_scores_are_weight_magnitude_times_input_norm():
    weight = torch.tensor([[1.0, -2.0], [-3.0, 4.0]])
    norms = torch.tensor([10.0, 0.5])
    assert wanda_scores(weight, norms).tolist() == [[10.0, 1.0], [30.0, 2.0]]


def test_outlier_ratio_uses_one_mean_over_the_whole_block():
    first = torch.ones(4, 2)
    second = torch.tensor([1.0, 11.0])  # all 10 scores: mean 2, threshold 5 x 2 = 10
    assert outlier_ratio(lambda: iter([first, second]), 5.0) == pytest.approx(10.0)
    assert outlier_ratio(lambda: iter([torch.ones(3)]), 0.5) == pytest.approx(100.0)
