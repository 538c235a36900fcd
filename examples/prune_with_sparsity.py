"""Prune a checkpoint with the per-layer sparsities from `htsr allocate sparsity`.

    htsr allocate sparsity fixtures/resnet18_w16.pth --target 0.5 --format json -o sparsity.json
    python examples/prune_with_sparsity.py sparsity.json fixtures/resnet18_w16.pth pruned.pth

Magnitude pruning, one matrix at a time: in every matrix with a sparsity, the
round(sparsity * size) weights of smallest absolute value are set to zero.
Matrices with `sparsity: null` (embeddings, heads, layers without alpha) are left
as they are. Plain torch; the checkpoint is a torch state-dict file.
"""

from __future__ import annotations

import argparse
import json

import torch


def prune_state_dict(state: dict[str, torch.Tensor], plan: dict) -> dict[str, float]:
    """Zero the smallest-magnitude weights of each planned matrix in place; returns achieved sparsities."""
    achieved = {}
    for entry in plan["layers"]:
        if entry["sparsity"] is None:
            continue
        weight = state[entry["tensor"]]
        count = round(entry["sparsity"] * weight.numel())
        if count > 0:
            # indices of the `count` smallest |w|; exact count even when magnitudes tie
            smallest = torch.topk(weight.abs().flatten(), count, largest=False).indices
            weight.view(-1)[smallest] = 0
        achieved[entry["tensor"]] = count / weight.numel()
    return achieved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="htsr.sparsity/1 JSON from `htsr allocate sparsity --format json`")
    parser.add_argument("checkpoint", help="torch state-dict file (.pth/.pt/.bin)")
    parser.add_argument("output", help="where to save the pruned state dict")
    args = parser.parse_args(argv)

    with open(args.plan) as handle:
        plan = json.load(handle)
    if plan.get("schema") != "htsr.sparsity/1":
        raise SystemExit(f"{args.plan}: not an htsr.sparsity/1 file")
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    achieved = prune_state_dict(state, plan)
    torch.save(state, args.output)

    zeros = sum(round(s * state[key].numel()) for key, s in achieved.items())
    total = sum(state[key].numel() for key in achieved)
    print(f"pruned {len(achieved)} matrices: {zeros:,} of {total:,} weights zeroed "
          f"(sparsity {zeros / total:.4f}, target {plan['settings']['target']}) -> {args.output}")


if __name__ == "__main__":
    main()
