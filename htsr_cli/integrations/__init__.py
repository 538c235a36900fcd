"""htsr during training: callbacks for Hugging Face's Trainer and for Lightning.

    htsr_cli.integrations.transformers        TempBalanceCallback, AlphaLogger (a transformers.TrainerCallback)
    htsr_cli.integrations.lightning           the same for `lightning.pytorch`
    htsr_cli.integrations.pytorch_lightning   the same for the `pytorch_lightning` import name

Each module imports only its own framework, when it is imported; this package
imports none. TempBalanceCallback runs TempBalance (per layer) or Model
Balancing (per block) on the live weights and multiplies the trainer's own
scheduled LR per layer (`_balancing`); AlphaLogger logs per-layer alpha and the
summary metrics through the trainer's logging (`_alpha_logging`).
"""
