"""An `htsr.bits/1` plan as input to the quantizers people run.

- llama.cpp: `--tensor-type-file` lines `PATTERN=TYPE` for `llama-quantize`, one
  anchored regex per GGUF tensor name (`^blk\\.3\\.attn_q\\.weight$=Q4_K`). The
  names come from the `gguf` package's own Hugging Face -> GGUF table (the one
  llama.cpp's converter uses), for the architecture in config.json.
- llm-compressor: a recipe YAML with one config group per width whose targets
  are the planned modules by name (compressed-tensors matches a target equal to
  the module name), for GPTQModifier or QuantizationModifier (round-to-nearest).
"""

from __future__ import annotations

import re
from typing import Any

from htsr_cli.errors import HtsrError

# Bits -> the GGML type llama-quantize writes for them (K-quants where there is one).
GGUF_TYPES = {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 5: "Q5_K", 6: "Q6_K", 8: "Q8_0", 16: "F16"}
# Hugging Face model_type values whose GGUF architecture has another name (llama.cpp's converter).
GGUF_ARCHITECTURES = {"mistral": "llama", "mixtral": "llama", "gpt_neox": "gptneox"}
DEFAULT_ARCHITECTURE = "llama"
MODIFIERS = {"gptq": "GPTQModifier", "rtn": "QuantizationModifier"}
PACKED_MAX_BITS = 8  # compressed-tensors packs integer weights of 1..8 bits; wider ones stay unquantized
_BLOCK_NUMBER = re.compile(r"\.(\d+)\.")


def planned(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's entries that carry a width."""
    return [entry for entry in plan["layers"] if entry.get("bits") is not None]


def gguf_architecture(model_type: str | None) -> str:
    """The GGUF architecture name for a Hugging Face model_type (llama when unknown)."""
    import gguf

    name = GGUF_ARCHITECTURES.get(model_type or "", model_type or DEFAULT_ARCHITECTURE)
    return name if name in gguf.MODEL_ARCH_NAMES.values() else DEFAULT_ARCHITECTURE


def gguf_names(tensors: list[str], architecture: str) -> dict[str, str]:
    """Each tensor key's GGUF name, from gguf's TensorNameMap (a GGUF name maps to itself)."""
    import gguf

    arch = next(arch for arch, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    numbers = [int(number) for key in tensors for number in _BLOCK_NUMBER.findall(key)]
    table = gguf.get_tensor_name_map(arch, max(numbers, default=0) + 1)
    names = {}
    for key in tensors:
        name = table.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise HtsrError(
                f"{key}: has no GGUF name for architecture {architecture} in gguf's tensor map; "
                "llama.cpp's converter would not know it either"
            )
        names[key] = name
    return names


def llama_cpp_tensor_types(plan: dict[str, Any]) -> str:
    """`llama-quantize --tensor-type-file` contents: one `^NAME$=TYPE` per planned tensor.

    The file is whitespace-separated tokens, so it has no comments; a layer whose
    width has no GGML type (1, 7, 9-15 bits) is refused.
    """
    entries = planned(plan)
    missing = sorted({entry["bits"] for entry in entries} - set(GGUF_TYPES))
    if missing:
        raise HtsrError(
            f"no llama.cpp type holds {missing[0]} bits; choose widths among "
            f"{', '.join(str(bits) for bits in GGUF_TYPES)} for -f llama-cpp"
        )
    architecture = gguf_architecture(plan.get("model_type"))
    names = gguf_names([entry["tensor"] for entry in entries], architecture)
    lines = [f"^{re.escape(names[entry['tensor']])}$={GGUF_TYPES[entry['bits']]}" for entry in entries]
    return "\n".join(lines) + "\n"


def llm_compressor_recipe(plan: dict[str, Any], modifier: str = "gptq", symmetric: bool = True) -> str:
    """An llm-compressor recipe (YAML): one config group per planned width up to 8 bits.

    Wider widths (16) are left out: those layers stay unquantized. Targets are
    module names (the tensor key without `.weight`); compressed-tensors quantizes
    Linear modules, so a planned embedding or convolution is refused.
    """
    import yaml

    if modifier not in MODIFIERS:
        raise HtsrError(f"recipe modifier must be one of {', '.join(MODIFIERS)}, got {modifier!r}")
    group_size = plan["settings"]["group_size"]
    groups: dict[int, list[str]] = {}
    for entry in planned(plan):
        if entry["bits"] > PACKED_MAX_BITS:
            continue
        if entry["kind"] != "linear":
            raise HtsrError(
                f"{entry['tensor']}: an {entry['kind']} planned at {entry['bits']} bits; llm-compressor "
                "quantizes Linear layers (leave --embedding-bits out for this export)"
            )
        groups.setdefault(entry["bits"], []).append(entry["tensor"].removesuffix(".weight"))
    if not groups:
        raise HtsrError(f"no layer is planned at {PACKED_MAX_BITS} bits or fewer: nothing for llm-compressor to quantize")
    config_groups = {}
    for bits in sorted(groups):
        weights: dict[str, Any] = {"num_bits": bits, "type": "int", "symmetric": symmetric}
        weights.update({"strategy": "group", "group_size": group_size} if group_size else {"strategy": "channel"})
        config_groups[f"group_{bits}bit"] = {"targets": groups[bits], "weights": weights}
    recipe = {"quant_stage": {"quant_modifiers": {MODIFIERS[modifier]: {"config_groups": config_groups}}}}
    return yaml.safe_dump(recipe, sort_keys=False)
