"""Real Hugging Face Trainer runs (a few CPU steps, tiny BERT, random tokens) with the htsr callbacks."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("accelerate")
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)

from htsr_cli.integrations._balancing import UNIT_KEY, innermost_optimizer, innermost_scheduler  # noqa: E402
from htsr_cli.integrations.transformers import AlphaLogger, TempBalanceCallback  # noqa: E402

BASE_LR = 1e-3
WARMUP = 3
BATCH = 4


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    """Two layers of 64 wide matrices: every inner matrix has >= 50 eigenvalues, so TempBalance adjusts it."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=32, num_labels=2,
    )
    return BertForSequenceClassification(config)


def token_data(samples: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 96, (samples, 12), generator=g)
    return [{"input_ids": row, "labels": int(row[0] % 2)} for row in ids]


def arguments(tmp_path, steps: int, **options) -> TrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "run"), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=BASE_LR,
        lr_scheduler_type="linear", warmup_steps=WARMUP, report_to=[], use_cpu=True, save_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=0,
    )
    return TrainingArguments(**{**defaults, **options})


class LrProbe(TrainerCallback):
    """After the balancer's on_step_end: each sub-group's (layer, lr, scheduled LR of its group) and the schedule."""

    def __init__(self, balance: TempBalanceCallback) -> None:
        self.balance = balance
        self.seen: dict[int, tuple[list[tuple[str, float, float]], list[float]]] = {}

    def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        rates = self.balance.learning_rates
        parts = [(layer, part["lr"], group["lr"]) for group, layer, part in rates.parts]
        self.seen[state.global_step] = (parts, innermost_scheduler(lr_scheduler).get_last_lr())


def linear_warmup(step: int, total: int) -> float:
    """transformers' linear schedule with warmup, written out."""
    if step < WARMUP:
        return BASE_LR * step / WARMUP
    return BASE_LR * max(0.0, (total - step) / (total - WARMUP))


def check_factors_times_schedule(balance: TempBalanceCallback, probe: LrProbe, total: int) -> None:
    recomputes = [entry for entry in balance.history if entry.step > 0]
    assert [entry.step for entry in recomputes] == list(range(2, total + 1, 2))
    assert any(abs(factor - 1.0) > 1e-3 for entry in recomputes for factor in entry.factors.values())
    for entry in recomputes:
        parts, last_lrs = probe.seen[entry.step]
        assert last_lrs[0] == pytest.approx(linear_warmup(entry.step, total), rel=1e-12)  # the schedule is intact
        for layer, lr, scheduled in parts:
            assert scheduled in [pytest.approx(value, rel=1e-12) for value in last_lrs]
            assert lr == pytest.approx(entry.factors.get(layer, 1.0) * scheduled, rel=1e-12)


def test_adamw_lrs_are_factor_times_the_warmup_schedule_and_frozen_params_stay_out(tmp_path):
    model = tiny_bert()
    model.bert.embeddings.requires_grad_(False)
    frozen = {name: p.detach().clone() for name, p in model.bert.embeddings.named_parameters()}
    balance = TempBalanceCallback(every_n_steps=2)
    probe = LrProbe(balance)
    trainer = Trainer(model, arguments(tmp_path, 8), train_dataset=token_data(32), callbacks=[balance, probe])
    trainer.train()

    check_factors_times_schedule(balance, probe, 8)
    optimizer = innermost_optimizer(trainer.optimizer)
    assert isinstance(optimizer, torch.optim.AdamW)
    # The Trainer's two groups (decay, no decay) split per layer, each keeping its weight decay
    decays = {part[UNIT_KEY]: part["weight_decay"] for part in optimizer.param_groups if part["params"][0].ndim > 1}
    assert "bert.encoder.layer.0.attention.self.query" in decays
    in_groups = {id(p) for part in optimizer.param_groups for p in part["params"]}
    assert not in_groups & {id(p) for p in model.bert.embeddings.parameters()}
    assert not any(name.startswith("bert.embeddings") for name in balance.history[-1].factors)
    for name, parameter in model.bert.embeddings.named_parameters():
        assert torch.equal(parameter, frozen[name]), name


def test_sgd_with_its_own_warmup_scheduler(tmp_path):
    model = tiny_bert(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=BASE_LR, momentum=0.9)
    scheduler = get_linear_schedule_with_warmup(optimizer, WARMUP, 6)
    balance = TempBalanceCallback(every_n_steps=2)
    probe = LrProbe(balance)
    trainer = Trainer(
        model, arguments(tmp_path, 6), train_dataset=token_data(24), callbacks=[balance, probe],
        optimizers=(optimizer, scheduler),
    )
    trainer.train()
    check_factors_times_schedule(balance, probe, 6)
    assert {part["momentum"] for part in optimizer.param_groups} == {0.9}


def test_epoch_recompute_and_model_balancing_groups_by_block(tmp_path):
    balance = TempBalanceCallback("model-balancing")  # every epoch
    trainer = Trainer(
        tiny_bert(2), arguments(tmp_path, -1, num_train_epochs=2), train_dataset=token_data(8), callbacks=[balance]
    )
    trainer.train()
    assert [entry.epoch for entry in balance.history] == [0, 1, 2]
    factors = balance.history[-1].factors
    # one factor per block: every adjusted layer of encoder.layer.0 shares it
    block0 = {f for name, f in factors.items() if ".layer.0." in name and f != 1.0}
    assert len(block0) == 1
    assert balance.history[-1].seconds > 0


def test_a_peft_lora_layer_is_its_adapted_module_with_the_merged_weight(tmp_path):
    peft = pytest.importorskip("peft")
    from htsr_cli.integrations._balancing import LiveLayers, trained_layers

    model = peft.get_peft_model(tiny_bert(3), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    balance = TempBalanceCallback(every_n_steps=2)
    probe = LrProbe(balance)
    trainer = Trainer(model, arguments(tmp_path, 6), train_dataset=token_data(24), callbacks=[balance, probe])
    trainer.train()
    check_factors_times_schedule(balance, probe, 6)

    layers = [layer.name for layer in trained_layers(model) if layer.lora]
    assert layers == [
        f"base_model.model.bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")
    ]
    optimizer = innermost_optimizer(trainer.optimizer)
    lora_groups = {part[UNIT_KEY] for part in optimizer.param_groups if any(".lora_" in n for n in [
        name for name, p in model.named_parameters() if any(p is q for q in part["params"])])}
    assert lora_groups == set(layers)
    # the analysed weight is W + (alpha/r) B A, as peft's own merge gives it
    live = LiveLayers(trained_layers(model))
    merged = model.merge_and_unload().state_dict()
    for name in layers:
        plain = name.removeprefix("base_model.model.")
        assert torch.allclose(live.load(f"{name}.weight"), merged[f"{plain}.weight"], atol=1e-6)


def test_alpha_logger_values_equal_htsr_analyze_of_the_saved_checkpoints(tmp_path, cli):
    run = arguments(tmp_path, 4, save_strategy="steps", save_steps=2)
    trainer = Trainer(tiny_bert(4), run, train_dataset=token_data(16))
    AlphaLogger(trainer, every_n_steps=2, layers=r"encoder", farms=True)
    trainer.train()

    logged = {entry["step"]: entry for entry in trainer.state.log_history if "htsr/mean_alpha" in entry}
    assert sorted(logged) == [2, 4]
    for step, entry in logged.items():
        result = cli(
            "analyze", tmp_path / "run" / f"checkpoint-{step}", "--layers", "encoder", "--farms", "--format", "json"
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        alphas = {layer["name"]: layer["alpha"] for layer in report["layers"] if layer["alpha"] is not None}
        assert len(alphas) == 12
        assert {key.removeprefix("htsr/alpha/"): value for key, value in entry.items()
                if key.startswith("htsr/alpha/")} == pytest.approx(alphas, rel=1e-9)
        assert entry["htsr/mean_alpha"] == pytest.approx(report["summary"]["mean_alpha"], rel=1e-9)
        farms = {layer["name"]: layer["alpha_farms"] for layer in report["layers"] if layer["alpha_farms"] is not None}
        assert farms and {key.removeprefix("htsr/alpha_farms/"): value for key, value in entry.items()
                          if key.startswith("htsr/alpha_farms/")} == pytest.approx(farms, rel=1e-9)
        assert math.isfinite(entry["htsr/analysis_seconds"])


def test_bad_settings_are_one_line_errors():
    from htsr_cli.errors import InvalidSetting

    with pytest.raises(InvalidSetting, match="every_n_steps"):
        TempBalanceCallback(every_n_steps=0)
    with pytest.raises(InvalidSetting, match="exactly one"):
        TempBalanceCallback(every_n_steps=2, every_n_epochs=1)
    with pytest.raises(InvalidSetting, match="method"):
        TempBalanceCallback("tempbalanse")
