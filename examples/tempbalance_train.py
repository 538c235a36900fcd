"""Train a small CNN with plain SGD + cosine, then with TempBalance, and print both losses.

    python examples/tempbalance_train.py

Synthetic, deterministic data (10 classes of noisy 3x16x16 images made from fixed
class templates); CPU, well under a minute. TempBalance re-fits every layer's alpha
after each epoch and gives less-trained layers (larger alpha) a larger share of the
cosine learning rate. A toy run like this says nothing general about which is better.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from htsr_cli.allocations import TempBalance

EPOCHS = 5
BASE_LR = 0.05
BATCH = 64
CLASSES = 10


def synthetic_data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images = class template + noise; the templates are the same for every split."""
    templates = torch.randn(CLASSES, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (count,), generator=generator)
    images = templates[labels] + 3.0 * torch.randn(count, 3, 16, 16, generator=generator)
    return images, labels


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # [B, 32, 8, 8]
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # [B, 64, 4, 4]
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, CLASSES),
    )


def cosine(epoch: int) -> float:
    return BASE_LR * 0.5 * (1.0 + math.cos(math.pi * epoch / EPOCHS))


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> None:
    model.train()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch))
    for start in range(0, len(labels), BATCH):
        batch = order[start : start + BATCH]
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()


@torch.no_grad()
def test_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return float(nn.functional.cross_entropy(model(images), labels))


def run(use_tempbalance: bool) -> float:
    train, test = synthetic_data(2048, seed=1), synthetic_data(1024, seed=2)
    model = small_cnn()
    if use_tempbalance:
        # Sequential modules are named "0", "4", ...: no "bn"/"conv" names, so the
        # BatchNorm layers stay in the default group at the plain cosine LR.
        tb = TempBalance(model, base_lr=BASE_LR)
        optimizer = torch.optim.SGD(tb.param_groups(), lr=BASE_LR, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=BASE_LR, momentum=0.9, weight_decay=5e-4)
    for epoch in range(EPOCHS):
        train_epoch(model, optimizer, *train, epoch)
        if use_tempbalance:
            tb.step(optimizer, lr=cosine(epoch + 1))
        else:
            for group in optimizer.param_groups:
                group["lr"] = cosine(epoch + 1)
    if use_tempbalance:
        factors = ", ".join(f"{name}: {factor:.2f}" for name, factor in tb.factors.items())
        print(f"final TempBalance factors: {factors}")
    return test_loss(model, *test)


def main() -> None:
    torch.set_num_threads(1)  # ops this small lose more to thread sync than they gain
    baseline = run(use_tempbalance=False)
    balanced = run(use_tempbalance=True)
    print(f"SGD + cosine      test loss after {EPOCHS} epochs: {baseline:.4f}")
    print(f"TempBalance       test loss after {EPOCHS} epochs: {balanced:.4f}")


if __name__ == "__main__":
    main()
