"""Real Lightning runs (a few CPU steps, a tiny CNN with BatchNorm, random images) with the htsr callbacks."""

from __future__ import annotations

import csv
import importlib
import json
import subprocess
import sys

import pytest
import torch

from htsr_cli.integrations._balancing import UNIT_KEY

BASE_LR = 0.05
WARMUP = 3


def warmup_then_cosine(total: int):
    def factor(step: int) -> float:
        if step < WARMUP:
            return (step + 1) / WARMUP
        return 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (step - WARMUP) / (total - WARMUP)))).item()

    return factor


def lightning_module(package, optimizer_name: str, total: int, freeze_stem: bool = False):
    """A LightningModule: conv-bn-conv-bn-linear-linear, its own optimizer and a per-step warmup+cosine schedule."""

    class TinyCnn(package.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.conv1 = torch.nn.Conv2d(16, 24, 3, padding=1)
            self.bn1 = torch.nn.BatchNorm2d(24)
            self.conv2 = torch.nn.Conv2d(24, 32, 3, padding=1)
            self.bn2 = torch.nn.BatchNorm2d(32)
            self.hidden = torch.nn.Linear(32, 64)
            self.head = torch.nn.Linear(64, 4)
            if freeze_stem:
                self.stem.requires_grad_(False)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x))).mean((2, 3))
            return self.head(torch.relu(self.hidden(x)))

        def training_step(self, batch, batch_idx):
            images, labels = batch
            return torch.nn.functional.cross_entropy(self(images), labels)

        def configure_optimizers(self):
            trainable = [p for p in self.parameters() if p.requires_grad]
            if optimizer_name == "sgd":
                optimizer = torch.optim.SGD(trainable, lr=BASE_LR, momentum=0.9, weight_decay=5e-4)
            else:
                optimizer = torch.optim.AdamW(trainable, lr=BASE_LR)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_cosine(total))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    return TinyCnn()


def image_batches(samples: int):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(samples, 3, 8, 8, generator=g)
    labels = torch.randint(0, 4, (samples,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)


def trainer(package, tmp_path, steps: int, callbacks: list, **options):
    return package.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), logger=False, enable_checkpointing=False,
        **options,
    )


@pytest.mark.parametrize(
    ("import_name", "optimizer_name"), [("lightning.pytorch", "sgd"), ("pytorch_lightning", "adamw")]
)
def test_lrs_are_factor_times_the_schedule_at_every_recompute(tmp_path, import_name, optimizer_name):
    package = pytest.importorskip(import_name)
    callbacks = importlib.import_module(
        "htsr_cli.integrations." + ("lightning" if import_name == "lightning.pytorch" else "pytorch_lightning")
    )
    steps = 8
    balance = callbacks.TempBalanceCallback(every_n_steps=2)
    seen = {}

    class Probe(package.Callback):  # after the balancer: each sub-group's LR and its group's scheduled LR
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rates = balance.learning_rates
            scheduler = trainer.lr_scheduler_configs[0].scheduler
            seen[trainer.global_step] = (
                [(layer, part["lr"], group["lr"]) for group, layer, part in rates.parts], scheduler.get_last_lr()[0]
            )

    module = lightning_module(package, optimizer_name, steps, freeze_stem=True)
    stem = module.stem.weight.detach().clone()
    trainer(package, tmp_path, steps, [balance, Probe()]).fit(module, image_batches(64))

    schedule = warmup_then_cosine(steps)
    recomputes = [entry for entry in balance.history if entry.step > 0]
    assert [entry.step for entry in recomputes] == [2, 4, 6, 8]
    for entry in recomputes:
        parts, scheduled = seen[entry.step]
        assert scheduled == pytest.approx(BASE_LR * schedule(entry.step), rel=1e-6)  # the schedule is intact
        assert any(abs(f - 1.0) > 1e-3 for f in entry.factors.values())
        for layer, lr, group_lr in parts:
            assert group_lr == pytest.approx(scheduled, rel=1e-12)
            assert lr == pytest.approx(entry.factors.get(layer, 1.0) * scheduled, rel=1e-12)
    groups = {part[UNIT_KEY]: part for part in trainer_optimizer(balance).param_groups}
    # the BatchNorm follows its conv; the frozen stem is neither analysed nor in a group
    assert {id(p) for p in module.bn1.parameters()} <= {id(p) for p in groups["conv1"]["params"]}
    assert "stem" not in groups and "stem" not in balance.history[-1].factors
    assert torch.equal(module.stem.weight, stem)


def trainer_optimizer(balance):
    return balance.learning_rates.optimizer


def test_alpha_logger_values_equal_htsr_analyze_of_the_saved_checkpoints(tmp_path, cli):
    package = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from htsr_cli.integrations.lightning import AlphaLogger

    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    logger = AlphaLogger(every_n_steps=2)
    run = package.Trainer(
        max_steps=4, accelerator="cpu", devices=1, callbacks=[logger, saving], enable_progress_bar=False,
        enable_model_summary=False, logger=CSVLogger(tmp_path, name="csv", version=0),
    )
    run.fit(lightning_module(package, "sgd", 4), image_batches(16))

    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    logged = {int(row["step"]): row for row in rows if row.get("htsr/mean_alpha")}
    assert sorted(logged) == [2, 4]
    for step, row in logged.items():
        result = cli("analyze", tmp_path / "ckpt" / f"step={step}.ckpt", "--format", "json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        alphas = {layer["name"]: layer["alpha"] for layer in report["layers"] if layer["alpha"] is not None}
        assert set(alphas) == {"stem", "conv1", "conv2", "hidden"}  # head: 4 eigenvalues, skipped
        for name, alpha in alphas.items():
            assert float(row[f"htsr/alpha/{name}"]) == pytest.approx(alpha, rel=1e-9)
        assert float(row["htsr/mean_alpha"]) == pytest.approx(report["summary"]["mean_alpha"], rel=1e-9)


def test_importing_one_integration_imports_no_other_framework():
    code = (
        "import sys, htsr_cli.integrations\n"
        "assert 'transformers' not in sys.modules and 'lightning' not in sys.modules\n"
        "import htsr_cli.integrations.transformers\n"
        "assert not {'lightning', 'pytorch_lightning'} & set(sys.modules), 'lightning imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
