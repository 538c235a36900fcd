"""How htsr names things: module paths and blocks (algorithms.md section 8). Pure string rules."""

from __future__ import annotations

import re

_NUMERIC = re.compile(r"^\d+$")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def readable(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD.

    A name can hold one: a `\\ud800` escape in a JSON header or report, or an
    undecodable byte of a file name (os.fsdecode). No encoder, font or file
    name accepts it, so everything drawn or shown uses this form.
    """
    return _LONE_SURROGATE.sub(REPLACEMENT, text)


def module_name(key: str) -> str:
    return key[: -len(".weight")] if key.endswith(".weight") else key


# Containers of repeated blocks that nest inside a numbered stage: timm's
# `stages.K.blocks.M` (ConvNeXt), Swin's `layers.K.blocks.M`, HF ConvNeXt's `stages.K.layers.M`.
_NESTED_BLOCK_CONTAINERS = ("blocks", "layers")


def block_of(name: str) -> str | None:
    """The repeated unit a module belongs to: its path up to the first purely numeric component,
    extended into a numbered stage's own numbered blocks.

    A stage (`features.1`, `stages.0`, `blocks.2`) that holds numbered blocks is not
    one unit: the block goes on through a second index right after the first
    (`features.1.0.block.0` -> `features.1.0`, timm EfficientNet `blocks.2.1.conv_pw`
    -> `blocks.2.1`) or through a `blocks`/`layers` container (`stages.0.blocks.1.conv_dw`
    -> `stages.0.blocks.1`), but never onto the module itself: a conv that is a
    stage's direct child (`features.0.0`, a Sequential's stem) stays in `features.0`.
    """
    parts = name.split(".")
    for index, part in enumerate(parts):
        if _NUMERIC.match(part):
            end = index + 1
            while True:
                if end + 1 < len(parts) and _NUMERIC.match(parts[end]):
                    end += 1
                elif end + 2 < len(parts) and parts[end] in _NESTED_BLOCK_CONTAINERS and _NUMERIC.match(parts[end + 1]):
                    end += 2
                else:
                    return ".".join(parts[:end])
    return None
