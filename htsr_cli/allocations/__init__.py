"""From alphas to decisions: pruning sparsity (AlphaPruning), layer-wise learning
rates (TempBalance, Model Balancing) and LoRA experts (AlphaLoRA).

The allocation functions are pure (numbers in, numbers out); the `*_plan` and
`lr_schedule` functions turn a `Report` into the versioned JSON documents the
CLI writes; `TempBalance` applies the learning rates during training.
"""

from htsr_cli.allocations.experts import ExpertSettings, expert_allocation, expert_plan
from htsr_cli.allocations.learning_rates import (
    LrSettings,
    base_lr_at,
    layer_factors,
    lr_schedule,
    sigmoid_factors,
    tb_factors,
)
from htsr_cli.allocations.sparsity import SparsitySettings, sparsity_allocation, sparsity_plan



def __getattr__(name: str):
    # TempBalance needs torch; the allocation functions do not, and the CLI
    # imports them at start-up.
    if name == "TempBalance":
        from htsr_cli.allocations.tempbalance import TempBalance

        return TempBalance
    raise AttributeError(f"module 'htsr_cli.allocations' has no attribute {name!r}")


__all__ = [
    "ExpertSettings",
    "LrSettings",
    "SparsitySettings",
    "TempBalance",
    "base_lr_at",
    "expert_allocation",
    "expert_plan",
    "layer_factors",
    "lr_schedule",
    "sigmoid_factors",
    "sparsity_allocation",
    "sparsity_plan",
    "tb_factors",
]
