"""Input activations of every prunable linear layer, one block at a time (Wanda's layer-sequential scheme).

The calibration text is tokenized with the model's tokenizer and cut into
`samples` consecutive windows of `seq_len` tokens. A copy of the model with a
single block is built with transformers (so embeddings, rotary tables and
masks are the model's own) and run on every window until the inputs of its
first block are captured. Then each block in turn gets its weights from the
checkpoint, runs on the cached hidden states while hooks add up the squared
input of each linear layer, is handed to `visit` (which may prune it), and
runs again if it was pruned, so the next block sees the pruned model's
activations.

Memory: the embeddings and the layers before the first block (freed once the
inputs are captured), one block, and two buffers of samples x seq_len x hidden
activations, whatever the number of blocks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from htsr_cli.checkpoints import Checkpoint
from htsr_cli.errors import HtsrError, brief
from htsr_cli.lm.language_models import (
    check_config_against_weights,
    check_seq_len,
    load_config,
    load_tokenizer,
    quiet_transformers,
    read_text,
    run_dtype,
    token_ids,
)
from htsr_cli.names import block_of, module_name
from htsr_cli.pruning.settings import CalibrationSettings
from htsr_cli.settings import ProgressCallback

PURPOSE = "calibration (--method wanda, --allocation owl)"
# A token is rarely more than a few characters; reading this many per token
# needed keeps a huge corpus from being tokenized whole.
_CHARS_PER_TOKEN_BOUND = 64


@dataclass
class HookedLinear:
    """A prunable linear layer of the current block and the squared norms of its inputs so far."""

    key: str  # the weight's tensor key in the checkpoint
    module: torch.nn.Module
    transposed: bool  # GPT-2's Conv1D stores [in, out]
    sum_squares: torch.Tensor  # [in], float64: sum over every calibration token of x_j^2

    @property
    def weight(self) -> torch.Tensor:
        """The weight as [out, in], a view: writing to it prunes the running model."""
        return self.module.weight.data.t() if self.transposed else self.module.weight.data

    @property
    def input_norms(self) -> torch.Tensor:
        """||X_j||_2 over all calibration tokens, [in]."""
        return self.sum_squares.sqrt()


# visit(block index, block name in the checkpoint, its prunable layers) -> whether it changed weights
Visit = Callable[[int, str, list[HookedLinear]], bool]


def calibration_windows(tokenizer: Any, settings: CalibrationSettings) -> torch.Tensor:
    """[samples, seq_len] token ids: consecutive windows from the start of the text."""
    needed = settings.samples * settings.seq_len
    text = read_text(settings.text, "--calibration", limit=needed * _CHARS_PER_TOKEN_BOUND)
    ids = token_ids(tokenizer, text, special_tokens=False)
    if len(ids) < needed:
        raise HtsrError(
            f"--calibration {settings.text}: {len(ids):,} tokens, too short for --samples {settings.samples} "
            f"x --seq-len {settings.seq_len} = {needed:,} tokens (give more text or lower --samples)"
        )
    return torch.tensor(ids[:needed], dtype=torch.long).view(settings.samples, settings.seq_len)


@dataclass(frozen=True)
class BlockStack:
    """Where the repeated blocks are: `checkpoint_prefix`.i in tensor keys, `model_path`[i] in the model."""

    checkpoint_prefix: str  # "model.layers"
    model_path: str  # "layers" inside the base model
    count: int


def block_stack(keys: Sequence[str], stored_keys: Sequence[str], base_prefix: str, blocks_in_config: int) -> BlockStack:
    """The one stack of numbered blocks every prunable key lies in, with its block count."""
    prefixes = set()
    for key in keys:
        block = block_of(module_name(key))
        if block is None:
            raise HtsrError(f"calibration runs the model block by block, but {key!r} is outside every numbered block")
        prefixes.add(block.rsplit(".", 1)[0])
    if len(prefixes) != 1:
        raise HtsrError(
            f"calibration needs the prunable layers in one stack of blocks; they are in {len(prefixes)} "
            f"({', '.join(sorted(prefixes)[:3])})"
        )
    prefix = prefixes.pop()
    indices = {
        int(key[len(prefix) + 1 :].split(".", 1)[0])
        for key in stored_keys
        if key.startswith(prefix + ".") and key[len(prefix) + 1 :].split(".", 1)[0].isdigit()
    }
    if indices != set(range(blocks_in_config)):
        raise HtsrError(
            f"the checkpoint has {len(indices)} blocks under {prefix!r} but its config says {blocks_in_config}"
        )
    model_path = prefix[len(base_prefix) + 1 :] if base_prefix and prefix.startswith(base_prefix + ".") else prefix
    return BlockStack(prefix, model_path, blocks_in_config)


class _Captured(Exception):
    """Raised by the stand-in first block once it has its inputs: the rest of the model need not run."""


class _FirstBlockInputs(torch.nn.Module):
    """Stands in for block 0, records what the model passes it, and stops the forward pass."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block
        self.hidden: torch.Tensor | None = None
        self.args: tuple = ()
        self.kwargs: dict[str, Any] = {}

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.hidden, self.args, self.kwargs = hidden, args, kwargs
        raise _Captured

    def __getattr__(self, name: str) -> Any:
        # Models read attributes of their layers (Qwen2's `attention_type`): answer for the block.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("block"), name)


def run_blocks(
    directory: Path,
    source: str,
    checkpoint: Checkpoint,
    keys: Sequence[str],
    settings: CalibrationSettings,
    device: torch.device,
    visit: Visit,
    progress: ProgressCallback | None = None,
) -> None:
    """Hand every block holding prunable `keys` to `visit`, with the input norms of those layers filled in."""
    import transformers

    config = load_config(directory, source, PURPOSE)
    tokenizer = load_tokenizer(directory, source, PURPOSE)
    check_seq_len(config, settings.seq_len, source)
    windows = calibration_windows(tokenizer, settings)
    stored = {info.key: info for info in checkpoint.stored()}
    dtype = run_dtype(device, stored[keys[0]].dtype)
    shapes = {key: info.shape for key, info in stored.items()}
    check_config_against_weights(lambda: _one_block_model(transformers, config, dtype, source), config, shapes, source)
    model = _one_block_model(transformers, config, dtype, source).to(device).eval()
    stack = block_stack(keys, list(stored), model.base_model_prefix or "", config.num_hidden_layers)
    blocks = model.get_submodule(stack.model_path)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) != 1:
        raise HtsrError(f"{source}: {stack.checkpoint_prefix!r} is not the stack of blocks of this architecture")
    missing = _load_outside_blocks(model, stack, checkpoint, stored)
    with torch.no_grad():
        hidden, args, kwargs = _first_block_inputs(model, stack, windows, device, missing, source)
        template = blocks[0]
        del model, blocks  # embeddings and everything before the blocks are no longer needed
        outputs = torch.empty_like(hidden)
        by_block: dict[int, list[str]] = {}
        for key in keys:
            by_block.setdefault(int(block_of(module_name(key)).rsplit(".", 1)[1]), []).append(key)
        for index in range(stack.count):
            name = f"{stack.checkpoint_prefix}.{index}"
            if progress is not None:
                progress(index, stack.count, name)
            _load_block(template, name, checkpoint, stored, source)
            linears = [_hooked(template, name, key, device) for key in by_block.get(index, [])]
            handles = [linear.module.register_forward_hook(_accumulate(linear)) for linear in linears]
            try:
                _run(template, hidden, outputs, args, kwargs)
            finally:
                for handle in handles:
                    handle.remove()
            if linears and visit(index, name, linears):
                _run(template, hidden, outputs, args, kwargs)  # the next block sees the pruned block
            hidden, outputs = outputs, hidden
        if progress is not None:
            progress(stack.count, stack.count, "")


def _one_block_model(transformers: Any, config: Any, dtype: torch.dtype, source: str) -> torch.nn.Module:
    """The base model (no head) with one block, built for real so its buffers are the model's own."""
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(set(layer_types)) > 1:
        raise HtsrError(
            f"{source}: its blocks use different attention types ({', '.join(sorted(set(layer_types)))}), "
            "which calibration does not support"
        )
    small = copy.deepcopy(config)
    small.num_hidden_layers = 1
    if isinstance(layer_types, list):
        small.layer_types = layer_types[:1]
    try:
        with quiet_transformers():
            return transformers.AutoModel.from_config(small, dtype=dtype, trust_remote_code=False)
    except Exception as error:
        raise HtsrError(
            f"{source}: calibration needs a model transformers can instantiate ({brief(error)})"
        ) from error


def _checkpoint_key(name: str, stored: dict, base_prefix: str) -> str | None:
    """The checkpoint's key for a base-model weight: saved with or without the base model's prefix."""
    for key in (name, f"{base_prefix}.{name}" if base_prefix else None):
        if key is not None and key in stored:
            return key
    return None


def _load_outside_blocks(model: torch.nn.Module, stack: BlockStack, checkpoint: Checkpoint, stored: dict) -> dict[str, str]:
    """Copy every weight outside the blocks that the checkpoint has; returns the ones it lacks (name -> module)."""
    base_prefix = model.base_model_prefix or ""
    missing = {}
    for name, target in model.state_dict(keep_vars=True).items():
        if name.startswith(stack.model_path + "."):
            continue
        key = _checkpoint_key(name, stored, base_prefix)
        if key is None:
            missing[name] = name.rsplit(".", 1)[0]
            continue
        _copy_into(target, checkpoint.load(key), key)
    return missing


def _copy_into(target: torch.Tensor, value: torch.Tensor, key: str) -> None:
    if tuple(target.shape) != tuple(value.shape):
        raise HtsrError(f"{key}: shape {tuple(value.shape)} in the checkpoint, {tuple(target.shape)} in the architecture")
    with torch.no_grad():
        target.data.copy_(value)


def _first_block_inputs(model, stack: BlockStack, windows, device, missing: dict[str, str], source: str):
    """Hidden states entering block 0 for every window, [samples, seq_len, hidden], and the other arguments.

    Every module that runs before block 0 is noted, so a weight the checkpoint
    lacks is an error only when the model actually needs it (a pooler or a head
    after the blocks never runs).
    """
    blocks = model.get_submodule(stack.model_path)
    catcher = _FirstBlockInputs(blocks[0])
    blocks[0] = catcher
    ran: set[str] = set()
    hooks = [
        module.register_forward_pre_hook(lambda _module, _inputs, name=name: ran.add(name))
        for name, module in model.named_modules()
        if name and not name.startswith(stack.model_path + ".")
    ]
    hidden = None
    try:
        for index in range(windows.shape[0]):
            try:
                with quiet_transformers():
                    model(input_ids=windows[index : index + 1].to(device), use_cache=False)
            except _Captured:
                pass
            if catcher.hidden is None:
                raise HtsrError(f"{source}: running the model never reached its first block")
            if hidden is None:
                needed = [name for name, module in missing.items() if module in ran]
                if needed:
                    raise HtsrError(f"{source}: the checkpoint lacks {needed[0]!r}, which the model needs before its first block")
                hidden = torch.empty((windows.shape[0], *catcher.hidden.shape[1:]), dtype=catcher.hidden.dtype, device=device)
            hidden[index] = catcher.hidden[0]
            catcher.hidden = None
    finally:
        blocks[0] = catcher.block
        for hook in hooks:
            hook.remove()
    return hidden, catcher.args, catcher.kwargs


def _load_block(template: torch.nn.Module, name: str, checkpoint: Checkpoint, stored: dict, source: str) -> None:
    for relative, target in template.state_dict(keep_vars=True).items():
        key = f"{name}.{relative}"
        if key not in stored:
            raise HtsrError(f"{source}: the checkpoint lacks {key!r}, which block {name} needs")
        _copy_into(target, checkpoint.load(key), key)


def _hooked(template: torch.nn.Module, name: str, key: str, device: torch.device) -> HookedLinear:
    from transformers.pytorch_utils import Conv1D

    path = module_name(key)[len(name) + 1 :]
    module = template.get_submodule(path)
    if not isinstance(module, (torch.nn.Linear, Conv1D)) or not key.endswith(".weight"):
        raise HtsrError(f"calibration prunes linear layers; {key!r} belongs to a {type(module).__name__}")
    transposed = isinstance(module, Conv1D)
    inputs = module.weight.shape[0] if transposed else module.weight.shape[1]
    return HookedLinear(key, module, transposed, torch.zeros(inputs, dtype=torch.float64, device=device))


def _accumulate(linear: HookedLinear):
    def hook(_module: torch.nn.Module, inputs: tuple, _output: Any) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()  # [tokens, in]
        # One fused norm per window in float32 (as Wanda), summed over windows in float64.
        linear.sum_squares += torch.linalg.vector_norm(x, dim=0).double().square()

    return hook


def _run(block: torch.nn.Module, hidden: torch.Tensor, outputs: torch.Tensor, args: tuple, kwargs: dict) -> None:
    """outputs[j] = block(hidden[j]) for every window, one window at a time as Wanda does."""
    for index in range(hidden.shape[0]):
        result = block(hidden[index : index + 1], *args, **kwargs)
        outputs[index] = (result[0] if isinstance(result, tuple) else result)[0]
