"""TempBalance during training: layer-wise learning rates recomputed from the live weights.

    tb = TempBalance(model, base_lr=0.1)
    optimizer = torch.optim.SGD(tb.param_groups(), lr=0.1, momentum=0.9)
    for epoch in range(epochs):
        train_one_epoch(model, optimizer)
        tb.step(optimizer, lr=0.1 * 0.5 * (1 + math.cos(math.pi * (epoch + 1) / epochs)))

Each weight-matrix module (conv, linear) gets its own parameter group holding its
weight and bias; a BatchNorm module joins the group of the conv it follows by
name; every other parameter sits in one "default" group at the plain LR.
`step` re-analyses the weights with `htsr_cli.analysis.analyze` (the same solver
and fit as the CLI) and sets each group's LR to factor * lr.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from htsr_cli.allocations.learning_rates import SCHEMA, LrSettings, bn_partner, layer_factors
from htsr_cli.analysis import analyze
from htsr_cli.errors import HtsrError
from htsr_cli.settings import AnalyzeSettings

DEFAULT_GROUP = "default"


class TempBalance:
    """Layer-wise LR factors for one model, from its alphas (algorithms.md section 6)."""

    def __init__(
        self,
        model: torch.nn.Module,
        base_lr: float = 0.1,
        map: str = "linear",
        unit: str = "layer",
        min_ratio: float = 0.5,
        max_ratio: float = 1.5,
        xmin: str = "median",
        *,
        factors: dict[str, float] | None = None,
    ) -> None:
        """With `factors` (module name -> factor) the factors are fixed and `step` never re-analyses."""
        self.model = model
        self.settings = LrSettings(base_lr, map, unit, min_ratio, max_ratio)
        self.xmin = xmin
        self.fixed = factors is not None
        self.factors = dict(factors) if factors is not None else self.compute_factors()

    @classmethod
    def from_schedule(cls, model: torch.nn.Module, path: str | Path) -> TempBalance:
        """Fixed factors from an exported `htsr.lr_schedule/1` JSON or YAML file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as error:
            raise HtsrError(f"{path}: cannot read the schedule ({error.strerror})") from None
        try:
            if path.suffix in (".yaml", ".yml"):
                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
            if not isinstance(data, dict) or data.get("schema") != SCHEMA:
                raise HtsrError(f"{path}: not an {SCHEMA} file")
            # Norm entries only repeat their conv's factor; they join the conv's group.
            factors = {entry["name"]: entry["factor"] for entry in data["layers"] if entry["kind"] != "norm"}
            settings = data["settings"]
            options = [settings[key] for key in ("base_lr", "map", "unit", "min_ratio", "max_ratio")]
            xmin = settings["analysis"]["xmin"]
        except (ValueError, KeyError, TypeError, yaml.YAMLError) as error:
            raise HtsrError(f"{path}: malformed {SCHEMA} file ({error})") from None
        modules = dict(model.named_modules())
        missing = [name for name in factors if name not in modules]
        if missing:
            raise HtsrError(f"{path}: module {missing[0]!r} is not in the model (schedule made for another model?)")
        return cls(model, *options, xmin, factors=factors)

    def compute_factors(self) -> dict[str, float]:
        """Analyse the model's current weights and map their alphas to factors."""
        device = next(self.model.parameters()).device.type
        report = analyze(self.model, AnalyzeSettings(xmin=self.xmin, device=device))
        return {name: entry.factor for name, entry in layer_factors(report.layers, self.settings).items()}

    def factor(self, group_name: str) -> float:
        return self.factors.get(group_name, 1.0)

    def param_groups(self) -> list[dict]:
        """Parameter groups for a torch optimizer, each named and at factor * base_lr."""
        groups: dict[str, list[torch.nn.Parameter]] = {}
        seen: set[int] = set()  # tied weights must sit in one group only
        for name, module in self.model.named_modules():
            for parameter in module.parameters(recurse=False):
                if id(parameter) in seen:
                    continue
                seen.add(id(parameter))
                if name in self.factors:
                    owner = name
                elif bn_partner(name) in self.factors:
                    owner = bn_partner(name)
                else:
                    owner = DEFAULT_GROUP
                groups.setdefault(owner, []).append(parameter)
        return [
            {"params": params, "name": owner, "lr": self.factor(owner) * self.settings.base_lr}
            for owner, params in groups.items()
        ]

    def step(self, optimizer: torch.optim.Optimizer, lr: float | None = None) -> None:
        """Recompute the factors (unless fixed) and set each group's LR to factor * lr.

        `lr` is this epoch's base LR from your schedule (default: base_lr).
        """
        if not self.fixed:
            self.factors = self.compute_factors()
        lr = self.settings.base_lr if lr is None else lr
        for group in optimizer.param_groups:
            group["lr"] = self.factor(group.get("name", DEFAULT_GROUP)) * lr
