"""htsr track on real runs: a transformers Trainer run and a Lightning run of a few steps
(tiny models, CPU, seconds), the tidy table, the plot, the gate and the one-line errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import assert_user_error


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory) -> Path:
    """A BERT-shaped classifier trained 12 steps by transformers' Trainer, saving and evaluating every 3."""
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    out = tmp_path_factory.mktemp("trainer") / "run"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=16, num_labels=2)
    ids = torch.randint(0, 64, (64, 8), generator=torch.Generator().manual_seed(0))
    labels = (ids[:, 0] > 32).long()

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, index: int) -> dict:
            return {"input_ids": ids[index], "labels": labels[index]}

    def accuracy(prediction) -> dict:
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    arguments = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=16, max_steps=12, save_steps=3, eval_steps=3,
        eval_strategy="steps", logging_steps=3, learning_rate=5e-3, report_to=[], use_cpu=True,
        save_only_model=True, seed=0, disable_tqdm=True,
    )
    Trainer(model=BertForSequenceClassification(config), args=arguments, train_dataset=Data(), eval_dataset=Data(),
            compute_metrics=accuracy).train()
    return out


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory) -> Path:
    """An MLP trained 16 steps by Lightning, a .ckpt and a validation every 4, logged by CSVLogger."""
    lightning = pytest.importorskip("lightning")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    class Module(lightning.LightningModule):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 2))

        def training_step(self, batch, index):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, index):
            x, y = batch
            self.log("val_acc", (self.net(x).argmax(-1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    x = torch.randn(128, 16)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    out = tmp_path_factory.mktemp("lightning")
    trainer = lightning.Trainer(
        max_steps=16, val_check_interval=4, logger=CSVLogger(out),
        callbacks=[ModelCheckpoint(every_n_train_steps=4, save_top_k=-1, save_last=True)],
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=2, accelerator="cpu",
        default_root_dir=out,
    )
    trainer.fit(Module(), loader, loader)
    return out


def test_trainer_run_table_json_and_csv(cli, trainer_run, tmp_path):
    result = cli("track", trainer_run, "--min-evals", "4", "-f", "json", "-q", "--plot", tmp_path / "alpha.png")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [c["step"] for c in document["checkpoints"]] == [3, 6, 9, 12]
    assert set(document["checkpoints"][-1]["eval"]) == {"eval_loss", "eval_accuracy", "loss"}
    assert document["eval_source"].endswith("checkpoint-12/trainer_state.json")
    pairs = {(c["summary_metric"], c["eval_metric"]): c for c in document["correlations"]}
    assert pairs["mean_alpha", "eval_loss"]["points"] == 4
    assert (tmp_path / "alpha.png").read_bytes().startswith(b"\x89PNG")
    from tests.results.test_schemas import validate

    validate(document)
    # Every checkpoint was cached by the first run: the CSV comes from the cache and matches analyze.
    table = cli("track", trainer_run, "--min-evals", "4", "-f", "csv", "-q")
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert {row["step"] for row in rows} == {"3", "6", "9", "12"}
    analysed = json.loads(cli("analyze", trainer_run / "checkpoint-9", "--min-evals", "4", "-f", "json", "-q").stdout)
    tracked = {row["layer"]: row["alpha"] for row in rows if row["step"] == "9"}
    assert all(
        (tracked[layer["name"]] == "" and layer["alpha"] is None) or float(tracked[layer["name"]]) == layer["alpha"]
        for layer in analysed["layers"]
    )
    summary = cli("track", trainer_run, "--min-evals", "4", "-q")
    assert summary.exit_code == 0 and "cache" in summary.stdout and "Spearman rho" in summary.stdout


def test_lightning_run_joins_its_csv_log(cli, lightning_run):
    result = cli("track", lightning_run, "-f", "json", "-q")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [c["step"] for c in document["checkpoints"]] == [4, 8, 12, 16]  # last.ckpt left out
    assert document["eval_source"].endswith("metrics.csv")
    assert all("val_acc" in c["eval"] for c in document["checkpoints"])


def test_gate_over_a_run_exits_1(cli, trainer_run):
    failed = cli("track", trainer_run, "--min-evals", "4", "-q", "--max-alpha-drift", "0.01", "-f", "json")
    assert failed.exit_code == 1
    gate = json.loads(failed.stdout)["gate"]
    assert not gate["passed"] and {f["rule"] for f in gate["findings"]} == {"max_alpha_drift"}
    assert min(f["step"] for f in gate["findings"]) == 6  # the first checkpoint has nothing to drift from
    assert "gate FAIL" in failed.stderr
    passed = cli("track", trainer_run, "--min-evals", "4", "-q", "--alpha-min", "0", "--alpha-max", "100")
    assert passed.exit_code == 0 and "gate PASS" in passed.stderr


def test_errors_are_one_line(cli, trainer_run, tmp_path):
    assert_user_error(cli("track", tmp_path), "no checkpoints found")
    assert_user_error(cli("track", tmp_path / "missing"), "no such file or directory")
    assert_user_error(cli("track", trainer_run, "--plot", tmp_path / "alpha.gif"), "must end in .png, .svg or .pdf")
    broken = tmp_path / "broken"
    (broken / "checkpoint-1").mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (broken / "checkpoint-1" / name).symlink_to(trainer_run / "checkpoint-3" / name)
    (broken / "checkpoint-1" / "trainer_state.json").write_text("{not json")
    assert_user_error(cli("track", broken, "--no-cache"), "unreadable trainer_state.json")


def test_max_memory_applies_to_every_checkpoint(cli, trainer_run):
    result = cli("track", trainer_run, "--max-memory", "1MiB", "--no-cache", "-f", "json", "-q")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["settings"]["max_memory"] == 1 << 20
    assert {row["step"] for row in document["layers"]} == {3, 6, 9, 12}
    assert_user_error(cli("track", trainer_run, "--max-memory", "4KB"), "--max-memory 4KB: must be at least 1MiB")
