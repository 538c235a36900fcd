"""Settings (htsr_cli/settings.py): memory sizes in bytes, and every out-of-range value refused by its parameter name."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htsr_cli.errors import HtsrError, InvalidSetting
from htsr_cli.settings import AnalyzeSettings, FarmsSettings, parse_memory_size


UNITS = {
    "": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}


@given(st.integers(1, 10**6), st.sampled_from(sorted(UNITS)), st.booleans(), st.booleans())
def test_memory_sizes_parse_to_bytes(number, unit, lower, space):
    text = f"{number}{' ' if space else ''}{unit.lower() if lower else unit}"
    size = number * UNITS[unit]
    if size < 2**20:
        with pytest.raises(HtsrError, match="max_memory="):
            parse_memory_size(text)
    else:
        assert parse_memory_size(text) == size
        assert AnalyzeSettings(max_memory=text).max_memory == size


@given(st.text(max_size=20))
def test_any_text_parses_or_is_a_one_line_user_error(text):
    try:
        size = parse_memory_size(text)
    except HtsrError as error:
        assert "\n" not in str(error) and str(error).startswith("max_memory=")
    else:
        assert isinstance(size, int) and 2**20 <= size and math.isfinite(size)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8GB", 8_000_000_000),  # disk and RAM vendors' gigabytes
        ("512MiB", 536_870_912),  # 512 x 2**20
        ("16G", 17_179_869_184),  # `free -h`, Docker and Slurm: 16 x 2**30
        (" 2 gib ", 2_147_483_648),
        ("1.5e9", 1_500_000_000),
        ("0.5GB", 500_000_000),
        (2**20, 1_048_576),  # an int is bytes
    ],
)
def test_memory_sizes_by_hand(text, size):
    assert parse_memory_size(text) == size


def test_a_bare_small_number_suggests_the_unit_it_probably_meant():
    with pytest.raises(HtsrError, match=r"^max_memory='512': must be at least 1MiB; a bare number is bytes: did you mean 512GB\?$"):
        parse_memory_size("512")
    with pytest.raises(HtsrError, match=r"^max_memory=True: must be a size such as 8GB$"):
        parse_memory_size(True)


OUT_OF_RANGE = [
    (lambda: AnalyzeSettings(xmin="kss"), "xmin='kss': must be one of ks, median, peak"),
    (lambda: AnalyzeSettings(device="tpu"), "device='tpu': must be one of auto, cpu, cuda"),
    (lambda: AnalyzeSettings(precision="half"), "precision='half': must be one of mixed, float64, float32"),
    (lambda: AnalyzeSettings(conv_scale=0.0), "conv_scale=0.0: must be in [1e-06, 1e+06]"),
    (lambda: AnalyzeSettings(conv_scale=math.nan), "conv_scale=nan: must be in"),
    (lambda: AnalyzeSettings(min_evals=1), "min_evals=1: must be at least 2"),
    (lambda: AnalyzeSettings(min_evals=2.5), "min_evals=2.5: must be a whole number"),
    (lambda: AnalyzeSettings(min_evals=True), "min_evals=True: must be a whole number"),
    (lambda: AnalyzeSettings(layers=5), "layers=5: must be a regular expression"),
    (lambda: FarmsSettings(window=0), "window=0: must be at least 1"),
    (lambda: FarmsSettings(window=2.5), "window=2.5: must be a whole number"),
    (lambda: FarmsSettings(q=math.inf), "q=inf: must be a window aspect ratio in [0.001, 1000]"),
    (lambda: FarmsSettings(steps=1), "steps=1: must be at least 2"),
]


@pytest.mark.parametrize(("make", "start"), OUT_OF_RANGE, ids=[start.split(":")[0] for _, start in OUT_OF_RANGE])
def test_out_of_range_settings_name_their_parameter(make, start):
    with pytest.raises(InvalidSetting) as raised:
        make()
    assert str(raised.value).startswith(start), str(raised.value)


def test_range_ends_are_allowed_and_max_memory_text_becomes_bytes():
    assert AnalyzeSettings(conv_scale=1e-6).conv_scale == 1e-6
    assert AnalyzeSettings(conv_scale=1e6, min_evals=2).min_evals == 2
    assert FarmsSettings(window=1, q=1e-3, steps=2).q == 1e-3
    assert AnalyzeSettings(max_memory="2MiB").max_memory == 2 * 2**20
    assert AnalyzeSettings().max_memory is None  # decided when the analysis starts
