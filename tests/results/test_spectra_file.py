"""Spectra files (htsr.spectra/1): the round trip, and every file that is not one refused with one clear line."""

from __future__ import annotations

import pytest
import torch

from htsr_cli.results.report import LayerSpectra
from htsr_cli.errors import HtsrError
from htsr_cli.results.spectra_file import load_spectra, save_spectra


def test_spectra_file_round_trips_esd_and_farms_pools(tmp_path):
    spectra = {
        "model.layers.0/odd name": LayerSpectra(torch.tensor([0.0, 1.5, 3.0], dtype=torch.float64),
                                                torch.tensor([0.25, 2.0], dtype=torch.float64)),
        "head": LayerSpectra(torch.tensor([1.0, 2.0], dtype=torch.float64)),
    }
    save_spectra(tmp_path / "s.safetensors", spectra)
    loaded = load_spectra(tmp_path / "s.safetensors")
    assert sorted(loaded) == sorted(spectra)
    assert loaded["model.layers.0/odd name"].esd.tolist() == [0.0, 1.5, 3.0]
    assert loaded["model.layers.0/odd name"].farms.tolist() == [0.25, 2.0]
    assert loaded["head"].esd.tolist() == [1.0, 2.0] and loaded["head"].farms is None
    with pytest.raises(HtsrError, match="missing.safetensors: no such file or directory"):
        load_spectra(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(HtsrError, match="is truncated or not a valid safetensors file"):
        load_spectra(tmp_path / "junk.safetensors")


def test_spectra_file_refuses_other_files_and_odd_dtypes(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "s.safetensors"
    save_file({"esd/a": torch.ones(3, dtype=torch.float64)}, path, metadata={"schema": "htsr.report/1"})
    with pytest.raises(HtsrError, match=r"s\.safetensors: not an htsr\.spectra/1 file \(schema is 'htsr\.report/1'\)"):
        load_spectra(path)
    save_file({"esd/a": torch.ones(3, dtype=torch.float64)}, path)
    with pytest.raises(HtsrError, match=r"not an htsr\.spectra/1 file \(schema is None\)"):
        load_spectra(path)
    for odd in (torch.ones(3, dtype=torch.float8_e4m3fn), torch.ones(3, dtype=torch.int64), torch.ones(2, 2)):
        save_file({"esd/a": odd}, path, metadata={"schema": "htsr.spectra/1"})
        with pytest.raises(HtsrError, match=r"'esd/a' is not a finite 1-D spectrum; the file is damaged$"):
            load_spectra(path)


def test_spectra_file_cut_short_while_read_is_a_clear_error(tmp_path, monkeypatch):
    from htsr_cli.checkpoints.safetensors_file import SafetensorsFile

    path = tmp_path / "s.safetensors"
    save_spectra(path, {"a": LayerSpectra(torch.arange(1.0, 2049.0, dtype=torch.float64))})
    listed = SafetensorsFile.tensors

    def truncate_after_listing(self):
        infos = listed(self)
        with path.open("r+b") as handle:  # another process rewrites the file meanwhile
            handle.truncate(path.stat().st_size - 4096)
        return infos

    monkeypatch.setattr(SafetensorsFile, "tensors", truncate_after_listing)
    with pytest.raises(HtsrError, match=r"cannot read tensor 'esd/a' \(the file ends 4,096 bytes short"):
        load_spectra(path)
