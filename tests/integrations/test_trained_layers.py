"""Which layers the TempBalance callbacks balance, and the one-line refusals."""

from __future__ import annotations

import pytest
import torch

from htsr_cli.errors import HtsrError
from htsr_cli.integrations._balancing import BalanceSettings, LiveTempBalance, trained_layers


def test_a_model_without_a_trainable_matrix_is_refused_in_one_line():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    model[0].requires_grad_(False)
    with pytest.raises(HtsrError, match="Sequential has no trainable weight matrix"):
        LiveTempBalance(model, BalanceSettings())


def test_frozen_and_one_dimensional_parameters_are_not_layers():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Conv1d(8, 8, 3))
    model[0].requires_grad_(False)
    assert [layer.name for layer in trained_layers(model)] == ["1", "3"]


def test_dora_adapters_are_refused_in_one_line():
    peft = pytest.importorskip("peft")
    base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["0"], use_dora=True))
    with pytest.raises(HtsrError, match="DoRA adapters are not supported"):
        trained_layers(model)
