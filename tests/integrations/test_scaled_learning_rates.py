"""The per-layer factors on top of any torch scheduler: chained and cycling schedules stay exact."""

from __future__ import annotations

import pytest
import torch

from htsr_cli.integrations._balancing import DEFAULT_GROUP, ScaledLearningRates

FACTORS = {"0": 0.5, "1": 1.5}


def split(model: torch.nn.Sequential) -> dict[int, str]:
    return {id(p): name for name, module in model.named_children() if name in FACTORS for p in module.parameters()}


def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))


def train_steps(net, optimizer, scheduler, steps: int):
    for _ in range(steps):
        net(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        yield


def test_a_chained_schedule_sees_only_its_own_lrs():
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)  # lr <- 0.5 lr, in place
    rates = ScaledLearningRates(optimizer, scheduler, split(net))
    rates.apply(FACTORS)
    assert [part["htsr_layer"] for part in optimizer.param_groups] == ["0", "1", DEFAULT_GROUP]
    for step, _ in enumerate(train_steps(net, optimizer, scheduler, 5), start=1):
        assert scheduler.get_last_lr() == [pytest.approx(0.1 * 0.5**step)]
        assert [part["lr"] for part in optimizer.param_groups] == pytest.approx(
            [factor * 0.1 * 0.5**step for factor in (0.5, 1.5, 1.0)]
        )


def test_one_cycle_momentum_and_every_group_option_reach_the_sub_groups():
    net = model()
    optimizer = torch.optim.SGD(
        [{"params": net[0].parameters(), "weight_decay": 0.1}, {"params": [*net[1].parameters(), *net[2].parameters()]}],
        lr=0.1, momentum=0.9,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[0.2, 0.4], total_steps=10)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9), max_lr=0.4, total_steps=10
    )
    rates = ScaledLearningRates(optimizer, scheduler, split(net))
    rates.apply(FACTORS)
    for _ in train_steps(net, optimizer, scheduler, 6):
        reference.optimizer.step()
        reference.step()
        expected_lr = reference.get_last_lr()[0]
        expected_momentum = reference.optimizer.param_groups[0]["momentum"]
        layer1, norm = optimizer.param_groups[1:]
        assert (layer1["lr"], norm["lr"]) == pytest.approx((1.5 * expected_lr, expected_lr))
        assert layer1["momentum"] == norm["momentum"] == pytest.approx(expected_momentum)
        assert optimizer.param_groups[0]["weight_decay"] == 0.1 and layer1["weight_decay"] == 0
