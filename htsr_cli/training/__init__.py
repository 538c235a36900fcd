"""Training with what the landscape measures: SharpBalance (Lu et al. 2024) trains an ensemble with
SAM, each member's sharpness-aware objective on the data subset the other members prescribe.

    from htsr_cli.training import SharpBalance, SharpBalanceSettings
    members = SharpBalance(lambda: make_model(), SharpBalanceSettings(members=3, epochs=20)).fit(x, y)

Definitions and where they come from: docs/algorithms.md, "SharpBalance".
"""


def __getattr__(name: str):
    # Training needs torch; `import htsr_cli.training` alone does not load it.
    if name in ("SharpBalance", "SharpBalanceSettings", "sam_gradient", "per_sample_sharpness", "sam_subsets"):
        from htsr_cli.training import sharpbalance

        return getattr(sharpbalance, name)
    raise AttributeError(f"module 'htsr_cli.training' has no attribute {name!r}")


__all__ = ["SharpBalance", "SharpBalanceSettings", "per_sample_sharpness", "sam_gradient", "sam_subsets"]
