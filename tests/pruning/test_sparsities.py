"""Per-matrix sparsities: OWL's formula on a hand-made case and exact counts that meet the global target."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from htsr_cli.errors import HtsrError
from htsr_cli.pruning.sparsities import exact_counts, owl_sparsities


def test_owl_sparsities_follow_the_formula_on_a_hand_made_case():
    # D = 1, 2, 3, 5 -> x = 0.16 (D - 1) / 4 = 0, .04, .08, .16; mean .07; s = 0.7 - (x - .07)
    assert owl_sparsities([1, 2, 3, 5], [10] * 4, 0.7, 0.08) == pytest.approx([0.77, 0.73, 0.69, 0.61])
    # unequal blocks: the parameter-weighted mean stays at the target
    sparsities = owl_sparsities([1, 2, 3, 5], [10, 30, 20, 40], 0.7, 0.08)
    assert math.fsum(s * n for s, n in zip(sparsities, [10, 30, 20, 40])) / 100 == pytest.approx(0.7)
    assert sparsities[0] - sparsities[3] == pytest.approx(0.16)
    assert owl_sparsities([4, 4], [1, 3], 0.6, 0.08) == pytest.approx([0.6, 0.6])
    with pytest.raises(HtsrError, match="outside"):
        owl_sparsities([0, 1], [1, 1], 0.9, 0.3)


def test_exact_counts_hand_case():
    # ideal 2.5, 2.5, 1.2 -> floors 2, 2, 1 (5); round(6.2) = 6 -> one more to the first largest remainder
    assert exact_counts([0.5, 0.25, 0.4], [5, 10, 3]) == [3, 2, 1]


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 0.99), st.integers(1, 10**7)), min_size=1, max_size=50))
def test_exact_counts_hit_the_global_count_within_one_per_matrix(pairs):
    ratios, sizes = zip(*pairs)
    counts = exact_counts(ratios, sizes)
    assert sum(counts) == round(math.fsum(r * n for r, n in pairs))
    for count, ratio, size in zip(counts, ratios, sizes):
        assert abs(count - ratio * size) < 1 and 0 <= count <= size
