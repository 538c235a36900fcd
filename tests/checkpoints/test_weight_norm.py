"""Weight-normalised layers read as the weight torch computes from g and v, in the layouts real models store."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch.nn.utils import parametrizations

from htsr_cli.checkpoints import open_checkpoint
from htsr_cli.engine.describe import describe
from htsr_cli.engine.pipeline import analyze


def old_style(module: torch.nn.Module, name: str = "weight", dim: int | None = 0) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated; old checkpoints still use it
        return torch.nn.utils.weight_norm(module, name=name, dim=dim)


class Crnn(torch.nn.Module):
    """An easyOCR-style CRNN: conv2d features, a bidirectional LSTM, a linear head; every weight normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            old_style(torch.nn.Conv2d(3, 32, 3)), torch.nn.ReLU(), parametrizations.weight_norm(torch.nn.Conv2d(32, 48, 3))
        )
        self.rnn = old_style(torch.nn.LSTM(48, 40, bidirectional=True), name="weight_hh_l0")
        self.head = old_style(torch.nn.Linear(80, 37))


class Fcpe(torch.nn.Module):
    """FCPE-style pitch estimator parts: conv1d input stack, weight-normed dense output, a transposed conv."""

    def __init__(self) -> None:
        super().__init__()
        self.input_stack = torch.nn.Sequential(old_style(torch.nn.Conv1d(128, 64, 3)), torch.nn.LeakyReLU())
        self.dense_out = old_style(torch.nn.Linear(64, 360))
        self.upsample = old_style(torch.nn.ConvTranspose1d(64, 32, 4), dim=1)  # g kept along dim 1
        self.whole = parametrizations.weight_norm(torch.nn.Linear(32, 24), dim=None)


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():  # magnitudes far from ||v||, so composing them matters
        for parameter in model.parameters():
            parameter.mul_(torch.rand_like(parameter) + 0.5)
    return model


def computed_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each normalised parameter as torch computes it for the forward pass."""
    computed = {}
    for module_name, module in model.named_modules():
        names = [name for name, _ in module.named_parameters(recurse=False) if name.endswith("_g")]
        names = [name.removesuffix("_g") for name in names]
        if hasattr(module, "parametrizations"):
            names += list(module.parametrizations.keys())
        for name in names:
            with torch.no_grad():
                if hasattr(module, "parametrizations") and name in module.parametrizations:
                    value = getattr(module, name)
                else:  # the old API recomputes the attribute in a forward pre-hook
                    hook = next(h for h in module._forward_pre_hooks.values() if getattr(h, "name", None) == name)
                    value = hook.compute_weight(module)
            computed[f"{module_name}.{name}" if module_name else name] = value.detach().clone()
    return computed


@pytest.mark.parametrize("make", [Crnn, Fcpe])
@pytest.mark.parametrize("saved_as", ["pth", "safetensors", "module"])
def test_loaded_weight_is_the_weight_torch_computes(make, saved_as, tmp_path):
    model = randomised(make())
    expected = computed_weights(model)
    if saved_as == "module":
        source = model
    else:
        source = tmp_path / f"model.{saved_as}"
        state = {key: value.contiguous() for key, value in model.state_dict().items()}
        torch.save(state, source) if saved_as == "pth" else save_file(state, source)
    with open_checkpoint(source) as checkpoint:
        listed = {info.key: info for info in checkpoint.tensors()}
        for key, weight in expected.items():
            assert listed[key].storage == "weight_norm float32" and listed[key].shape == tuple(weight.shape)
            torch.testing.assert_close(checkpoint.load(key), weight, rtol=1e-6, atol=1e-7)
        assert not [key for key in listed if key.endswith(("_g", "_v", "original0", "original1"))]


def test_alphas_equal_those_of_the_computed_weights(tmp_path):
    model = randomised(Crnn())
    torch.save(model.state_dict(), tmp_path / "crnn.pth")
    reference = analyze(computed_weights(model), device="cpu")
    report = analyze(tmp_path / "crnn.pth", device="cpu")
    # The LSTM's weight_hh_l0 is recomposed like every weight, and like an LSTM's plain weights not analysed.
    assert [layer.name for layer in report.layers] == ["features.0", "features.2", "head"]
    for ours, theirs in zip(report.layers, reference.layers):
        assert (ours.kind, ours.num_evals) == (theirs.kind, theirs.num_evals)
        assert ours.alpha == pytest.approx(theirs.alpha, rel=1e-5)
        assert ours.lambda_max == pytest.approx(theirs.lambda_max, rel=1e-5)
    assert [layer.storage for layer in describe(tmp_path / "crnn.pth").layers] == ["weight_norm float32"] * 3


def test_half_precision_pairs_compose_in_their_dtype(tmp_path):
    model = randomised(Fcpe()).half()
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, tmp_path / "half.safetensors")
    with open_checkpoint(tmp_path / "half.safetensors") as checkpoint:
        weight = checkpoint.load("dense_out.weight")
    expected = computed_weights(model.float())["dense_out.weight"]
    assert weight.dtype == torch.float16
    torch.testing.assert_close(weight.float(), expected, rtol=2e-3, atol=1e-4)


def test_pairs_that_are_not_weight_norm_stay_as_they_are():
    """A `_g`/`_v` pair whose shapes no weight norm gives, or one beside a stored weight, is left alone."""
    tensors = {
        "a.weight_g": torch.rand(8, 3), "a.weight_v": torch.randn(8, 4),  # g keeps two axes
        "b.weight": torch.randn(6, 5), "b.weight_g": torch.rand(6, 1), "b.weight_v": torch.randn(6, 5),
    }
    with open_checkpoint(tensors) as checkpoint:
        assert [info.key for info in checkpoint.tensors()] == list(tensors)
