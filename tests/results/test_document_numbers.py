"""A number field of a saved document: finite, in range, and an integer too large for a float is refused, not a crash."""

from __future__ import annotations

from htsr_cli.results.documents import number


def test_number_kinds_refuse_non_finite_and_overflowing_values():
    finite = number()
    assert finite.test(3) and finite.test(-2.5)
    assert not finite.test(float("nan")) and not finite.test(float("inf")) and not finite.test(True)
    assert not finite.test(10**400)  # math.isfinite would raise OverflowError
    unit = number(0.0, 1.0)
    assert unit.test(1) and not unit.test(1.5) and not unit.test(-(10**400))
