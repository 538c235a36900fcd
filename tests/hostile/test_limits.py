"""The limits htsr puts on inputs: each documented in docs/input-safety.md with the variable that raises it."""

from __future__ import annotations

import pytest

from htsr_cli.errors import HtsrError
from htsr_cli.io import DOCUMENT_BYTES, LIMITS
from tests.hostile.harness import REPO


@pytest.mark.parametrize("limit", LIMITS, ids=lambda limit: limit.variable)
def test_every_limit_is_documented_with_its_variable(limit):
    page = (REPO / "docs" / "input-safety.md").read_text()
    row = next((line for line in page.splitlines() if f"`{limit.variable}`" in line), None)
    assert row is not None and row.startswith("|"), limit.variable
    amount = limit.shown(limit.default) if limit.unit == "bytes" else f"{limit.default:,}"
    assert amount in row, (amount, row)


def test_a_limit_is_raised_by_its_variable_and_a_bad_value_is_one_line(monkeypatch):
    assert DOCUMENT_BYTES.value() == 64 << 20
    monkeypatch.setenv("HTSR_MAX_DOCUMENT_BYTES", "1_000_000")
    assert DOCUMENT_BYTES.value() == 1_000_000
    for bad in ("0", "-5", "lots", "1.5"):
        monkeypatch.setenv("HTSR_MAX_DOCUMENT_BYTES", bad)
        with pytest.raises(HtsrError, match="^HTSR_MAX_DOCUMENT_BYTES='.*': must be a whole number >= 1$"):
            DOCUMENT_BYTES.value()
