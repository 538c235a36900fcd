"""The Lightning callbacks' hooks, shared by the `lightning` and `pytorch_lightning` import names.

`htsr_cli.integrations.lightning` and `htsr_cli.integrations.pytorch_lightning`
each combine these with their package's `Callback` (a Trainer only accepts
callbacks of its own package). Nothing here imports Lightning.
"""

from __future__ import annotations

from typing import Any

from htsr_cli.errors import HtsrError
from htsr_cli.integrations._alpha_logging import AlphaLogSettings, live_alpha_metrics
from htsr_cli.integrations._balancing import BalancingCallback


class TempBalanceHooks(BalancingCallback):
    """Layer-wise LR factors from alpha, recomputed during training (TempBalance or Model Balancing).

    - `method`: "tempbalance" (per layer, linear map of alpha to [min_ratio, max_ratio])
      or "model-balancing" (per block, the sigmoid map); algorithms.md section 6.
    - `every_n_epochs` (default 1, as the published methods) or `every_n_steps`
      (optimizer steps, `trainer.global_step`). A recompute analyses every trained
      matrix once (0.01 s for the benchmark's small CNN; BENCHMARKS.md, "Training integrations").
    - Each parameter group's LR becomes factor x the LR the module's scheduler
      (`configure_optimizers`) sets; the scheduler is untouched otherwise.
      One optimizer per module.
    - Under DDP rank 0 computes the factors and broadcasts them.

    `history` lists every recompute (step, epoch, factors, seconds).
    """

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise HtsrError(
                f"TempBalanceCallback balances one optimizer; configure_optimizers returned {len(trainer.optimizers)}"
            )
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        self._balancer.start(pl_module, trainer.optimizers[0], schedulers[0] if schedulers else None, trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._balancer.settings.every.at_step(trainer.global_step):
            self._balancer.recompute(trainer.global_step, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._balancer.settings.every.at_epoch(trainer.current_epoch + 1):
            self._balancer.recompute(trainer.global_step, trainer.current_epoch + 1)


class AlphaLoggerHooks:
    """Logs per-layer alpha (`htsr/alpha/<layer>`) and the summary (`htsr/mean_alpha`, ...) every N steps.

    The values go to every logger of the Trainer (`logger.log_metrics`, at
    `trainer.global_step`: TensorBoard, CSV, W&B, ...), from rank 0. `layers`
    is a regex as `htsr analyze --layers`; `farms=True` adds alpha_farms.
    Under DDP rank 0 analyses and broadcasts. `history` holds (step, metrics).
    """

    def __init__(
        self, *, every_n_steps: int = 100, layers: str | None = None, farms: bool = False, xmin: str = "ks"
    ) -> None:
        self.settings = AlphaLogSettings(every_n_steps, layers, farms, xmin)
        self.history: list[tuple[int, dict[str, float]]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.settings.due(step) or (self.history and self.history[-1][0] == step):
            return  # not due, or logged at this step already (gradient accumulation)
        metrics = live_alpha_metrics(pl_module, self.settings)
        self.history.append((step, metrics))
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
