"""Output paths: never an input, never inside an input directory, never two outputs in one file."""

from __future__ import annotations

import os

import pytest

from htsr_cli.errors import HtsrError
from htsr_cli.io import check_output_paths


def test_output_equal_to_an_input_file_is_refused(tmp_path):
    model = tmp_path / "m.pth"
    model.write_bytes(b"weights")
    with pytest.raises(HtsrError, match=r"^-o .*m\.pth: is an input of this command"):
        check_output_paths({"-o": model}, [model])


def test_output_reaching_an_input_through_a_symlink_or_hard_link_is_refused(tmp_path):
    model = tmp_path / "m.pth"
    model.write_bytes(b"weights")
    (tmp_path / "alias.pth").symlink_to(model)
    os.link(model, tmp_path / "hard.pth")
    for alias in ("alias.pth", "hard.pth"):
        with pytest.raises(HtsrError, match="is an input of this command"):
            check_output_paths({"-o": tmp_path / alias}, [model])


def test_output_inside_an_input_directory_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x")
    with pytest.raises(HtsrError, match="lies inside the input directory"):
        check_output_paths({"-o": model / "model.safetensors"}, [model])
    with pytest.raises(HtsrError, match="lies inside the input directory"):
        check_output_paths({"-o": model / "report.json"}, [model])


def test_two_outputs_naming_one_file_are_refused(tmp_path):
    with pytest.raises(HtsrError, match="^-o and --save-spectra name the same file"):
        check_output_paths({"-o": tmp_path / "x", "--save-spectra": tmp_path / "x"}, [])


def test_distinct_outputs_and_devices_pass(tmp_path):
    model = tmp_path / "m.pth"
    model.write_bytes(b"weights")
    check_output_paths({"-o": tmp_path / "r.json", "--save-spectra": tmp_path / "s.safetensors", "--junit": None}, [model])
    check_output_paths({"-o": "/dev/null"}, [model, "/dev/null"])
