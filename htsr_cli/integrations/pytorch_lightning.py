"""Lightning callbacks for the `pytorch_lightning` import name.

    from htsr_cli.integrations.pytorch_lightning import AlphaLogger, TempBalanceCallback

    trainer = pytorch_lightning.Trainer(callbacks=[TempBalanceCallback(), AlphaLogger(every_n_steps=50)])

For the `lightning` package's `lightning.pytorch` use `htsr_cli.integrations.lightning`
(a Trainer accepts only callbacks of its own package). Install with `pip install pytorch-lightning`.
"""

from __future__ import annotations

from htsr_cli.integrations._lightning_hooks import AlphaLoggerHooks, TempBalanceHooks

try:
    from pytorch_lightning import Callback
except ImportError:
    raise ImportError(
        "htsr_cli.integrations.pytorch_lightning needs the pytorch-lightning package: pip install pytorch-lightning "
        "(with the lightning package use htsr_cli.integrations.lightning)"
    ) from None


class TempBalanceCallback(TempBalanceHooks, Callback):
    __doc__ = TempBalanceHooks.__doc__


class AlphaLogger(AlphaLoggerHooks, Callback):
    __doc__ = AlphaLoggerHooks.__doc__
