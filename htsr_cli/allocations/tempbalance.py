"""TempBalance during training: layer-wise learning rates recomputed from the live weights.

    tb = TempBalance(model, base_lr=0.1)
    optimizer = torch.optim.SGD(tb.param_groups(), lr=0.1, momentum=0.9)
    for epoch in range(epochs):
        train_one_epoch(model, optimizer)
        tb.step(optimizer, lr=0.1 * 0.5 * (1 + math.cos(math.pi * (epoch + 1) / epochs)))

Each weight-matrix module (conv, linear) gets its own parameter group holding its
weight and bias; a BatchNorm module joins the group of the conv it follows by
name; every other parameter sits in one "default" group at the plain LR.
`step` re-analyses the weights with `htsr_cli.engine.pipeline.analyze` (the same solver
and fit as the CLI) and sets each group's LR to factor * lr.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from htsr_cli.allocations.learning_rates import SCHEMA, LrSettings, bn_partner, layer_factors
from htsr_cli.engine.pipeline import analyze
from htsr_cli.results.report import Report
from htsr_cli.results.documents import LIST, NAME, OBJECT, TEXT, check_fields, number, parse_json
from htsr_cli.errors import HtsrError, brief
from htsr_cli.io import check_depth, read_document
from htsr_cli.settings import AnalyzeSettings

DEFAULT_GROUP = "default"


SCHEDULE_ENTRY_FIELDS = {"name": NAME, "kind": NAME, "factor": number(0.0, above=True)}
SCHEDULE_SETTINGS_FIELDS = {
    "base_lr": number(0.0, above=True), "map": TEXT, "unit": TEXT,
    "min_ratio": number(0.0, above=True), "max_ratio": number(0.0, above=True), "analysis": OBJECT,
}


def schedule_settings(document: object, source: str) -> tuple[dict[str, float], list, str]:
    """(module -> factor, LrSettings arguments, xmin) of an `htsr.lr_schedule/1` document, checked."""
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise HtsrError(f"{source}: not an {SCHEMA} file")
    check_fields(document, {"layers": LIST, "settings": OBJECT}, source, required=("layers", "settings"))
    settings = document["settings"]
    check_fields(settings, SCHEDULE_SETTINGS_FIELDS, f"{source}: settings", required=tuple(SCHEDULE_SETTINGS_FIELDS))
    check_fields(settings["analysis"], {"xmin": TEXT}, f"{source}: settings.analysis", required=("xmin",))
    factors = {}
    for index, entry in enumerate(document["layers"]):
        check_fields(entry, SCHEDULE_ENTRY_FIELDS, f"{source}: layer {index}", required=tuple(SCHEDULE_ENTRY_FIELDS))
        if entry["kind"] != "norm":  # norm entries only repeat their conv's factor; they join its group
            factors[entry["name"]] = float(entry["factor"])
    options = [settings[key] for key in ("base_lr", "map", "unit", "min_ratio", "max_ratio")]
    return factors, options, settings["analysis"]["xmin"]


class _PlainYamlLoader(yaml.SafeLoader):
    """safe_load without aliases: htsr writes none, and a few hundred bytes of nested
    aliases ("billion laughs") stand for more entries than memory holds."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", self.peek_event().start_mark)
        return super().compose_node(parent, index)


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
        """Fixed factors from an exported `htsr.lr_schedule/1` JSON or YAML file (every field checked)."""
        path = Path(path)
        data = read_document(path)
        if path.suffix in (".yaml", ".yml"):
            try:
                document = yaml.load(data, Loader=_PlainYamlLoader)
            except (yaml.YAMLError, RecursionError) as error:
                raise HtsrError(f"{path}: not valid YAML ({brief(error)})") from None
            check_depth(document, str(path))
        else:
            document = parse_json(data, str(path))
        factors, options, xmin = schedule_settings(document, str(path))
        modules = dict(model.named_modules())
        missing = [name for name in factors if name not in modules]
        if missing:
            raise HtsrError(f"{path}: module {missing[0]!r} is not in the model (schedule made for another model?)")
        return cls(model, *options, xmin, factors=factors)

    def compute_factors(self) -> dict[str, float]:
        """Analyse the model's current weights and map their alphas to factors."""
        parameter = next(self.model.parameters(), None)
        if parameter is None:
            raise HtsrError(f"{type(self.model).__name__} has no parameters: there are no learning rates to balance")
        device = parameter.device.type
        return self.factors_from(analyze(self.model, AnalyzeSettings(xmin=self.xmin, device=device)))

    def factors_from(self, report: Report) -> dict[str, float]:
        """Each analysed layer's factor (module name -> factor) under these settings."""
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
