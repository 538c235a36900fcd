"""TempBalance and alpha logging inside a Hugging Face Trainer run (CPU, well under a minute).

    python examples/trainer_callbacks.py

A tiny BERT (2 layers, hidden 64) trains for 8 steps on random tokens with
AdamW and a warmup + cosine schedule; TempBalance recomputes its factors every 4
steps and AlphaLogger logs the alphas every 4 steps through `trainer.log`.
Random data: this shows the mechanics, not a gain.
"""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from htsr_cli.integrations.transformers import AlphaLogger, TempBalanceCallback

torch.manual_seed(0)
config = BertConfig(
    vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
    max_position_embeddings=32, num_labels=2,
)
model = BertForSequenceClassification(config)
model.bert.embeddings.requires_grad_(False)  # frozen: neither analysed nor in any group
data = [{"input_ids": row, "labels": int(row[0] % 2)} for row in torch.randint(1, 96, (32, 12))]

balance = TempBalanceCallback(every_n_steps=4)  # "model-balancing" for per-block factors
args = TrainingArguments(
    output_dir="/tmp/htsr-trainer-example", max_steps=8, per_device_train_batch_size=4, learning_rate=1e-3,
    lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": 1e-4}, warmup_steps=3, report_to=[], use_cpu=True, save_strategy="no",
    logging_strategy="no", disable_tqdm=True,
)
trainer = Trainer(model, args, train_dataset=data, callbacks=[balance])
AlphaLogger(trainer, every_n_steps=4, layers=r"encoder\.layer\.0\.attention")
trainer.train()

for recompute in balance.history:
    adjusted = {name: factor for name, factor in recompute.factors.items() if factor != 1.0}
    print(f"step {recompute.step}: {len(adjusted)} layers adjusted, factors "
          f"{min(adjusted.values()):.3f}..{max(adjusted.values()):.3f} ({recompute.seconds:.2f} s)")
scheduled = trainer.lr_scheduler.get_last_lr()[0]
for group, layer, part in balance.learning_rates.parts[:4]:
    print(f"{layer:45s} lr {part['lr']:.3e} = {balance.history[-1].factors.get(layer, 1.0):.3f} x {scheduled:.3e}")
for entry in trainer.state.log_history:
    if "htsr/mean_alpha" in entry:
        alphas = {k.removeprefix("htsr/alpha/"): round(v, 3) for k, v in entry.items() if k.startswith("htsr/alpha/")}
        print(f"step {entry['step']}: mean_alpha {entry['htsr/mean_alpha']:.3f}  {alphas}")
