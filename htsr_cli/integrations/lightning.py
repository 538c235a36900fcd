"""Lightning callbacks (the `lightning` package: `import lightning.pytorch`).

    from htsr_cli.integrations.lightning import AlphaLogger, TempBalanceCallback

    trainer = lightning.pytorch.Trainer(callbacks=[TempBalanceCallback(), AlphaLogger(every_n_steps=50)])

For the older `pytorch_lightning` import name use `htsr_cli.integrations.pytorch_lightning`
(a Trainer accepts only callbacks of its own package). Install with `pip install lightning`
(or `pip install ".[lightning]"` in a clone of htsr).
"""

from __future__ import annotations

from htsr_cli.integrations._lightning_hooks import AlphaLoggerHooks, TempBalanceHooks

try:
    from lightning.pytorch import Callback
except ImportError:
    raise ImportError(
        "htsr_cli.integrations.lightning needs the lightning package: pip install lightning "
        "(with pytorch_lightning use htsr_cli.integrations.pytorch_lightning)"
    ) from None


class TempBalanceCallback(TempBalanceHooks, Callback):
    __doc__ = TempBalanceHooks.__doc__


class AlphaLogger(AlphaLoggerHooks, Callback):
    __doc__ = AlphaLoggerHooks.__doc__
