"""Hugging Face `Trainer` callbacks: TempBalance / Model Balancing, and alpha logging.

    from htsr_cli.integrations.transformers import AlphaLogger, TempBalanceCallback

    trainer = Trainer(model, args, train_dataset=..., callbacks=[TempBalanceCallback("model-balancing")])
    AlphaLogger(trainer, every_n_steps=50)   # logs through trainer.log: log_history, TensorBoard, W&B, ...
    trainer.train()

How the factors sit on top of the Trainer's schedule is in `htsr_cli.integrations._balancing`
(and docs/algorithms.md section 6). The Trainer needs accelerate (`pip install accelerate`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from htsr_cli.integrations._alpha_logging import AlphaLogSettings, live_alpha_metrics
from htsr_cli.integrations._balancing import BalancingCallback


class TempBalanceCallback(BalancingCallback, TrainerCallback):
    """Layer-wise LR factors from alpha, recomputed during training (TempBalance or Model Balancing).

    - `method`: "tempbalance" (per layer, linear map of alpha to [min_ratio, max_ratio])
      or "model-balancing" (per block, the sigmoid map); algorithms.md section 6.
    - `every_n_epochs` (default 1, as the published methods) or `every_n_steps`.
      A recompute analyses every trained weight matrix once: measured 0.53 s
      for all-MiniLM-L6-v2 (41 matrices, the 30522 x 384 word embedding
      included) on one thread of a busy 2-core CPU (BENCHMARKS.md, "Training
      integrations").
    - Each parameter group's LR becomes factor x the LR the Trainer's scheduler
      sets; the scheduler is untouched otherwise (warmup, cosine, ... keep working).
    - Under DDP rank 0 computes the factors and broadcasts them.

    `history` lists every recompute (step, epoch, factors, seconds).
    """

    _epochs_done = 0  # epochs finished in this run (set again at train begin)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._epochs_done = 0
        self._balancer.start(kwargs["model"], kwargs["optimizer"], kwargs.get("lr_scheduler"), state.global_step)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._balancer.settings.every.at_step(state.global_step):
            self._balancer.recompute(state.global_step, self._epochs_done)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._epochs_done += 1
        if self._balancer.settings.every.at_epoch(self._epochs_done):
            self._balancer.recompute(state.global_step, self._epochs_done)


class AlphaLogger(TrainerCallback):
    """Logs per-layer alpha (`htsr/alpha/<layer>`) and the summary (`htsr/mean_alpha`, ...) every N steps.

    The values go through `trainer.log`, so they land in `state.log_history`
    (and `trainer_state.json`) and in every reporter the Trainer has
    (TensorBoard, W&B, CSV, ...). Constructing one adds it to the trainer.
    `layers` is a regex as `htsr analyze --layers`; `farms=True` adds
    alpha_farms. Under DDP rank 0 analyses and broadcasts.
    """

    def __init__(
        self,
        trainer: Trainer,
        *,
        every_n_steps: int = 100,
        layers: str | None = None,
        farms: bool = False,
        xmin: str = "ks",
    ) -> None:
        self.settings = AlphaLogSettings(every_n_steps, layers, farms, xmin)
        self._trainer = trainer
        trainer.add_callback(self)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.settings.due(state.global_step):
            model: torch.nn.Module = kwargs["model"]
            self._trainer.log(live_alpha_metrics(model, self.settings))
