"""The analysis options of every command that analyses a checkpoint, declared once
and turned into one `AnalyzeSettings` in one call.

    @analysis_options
    def sparsity(source: CheckpointOrReportArg, target: TargetOpt,
                 settings: AnalyzeSettings = AnalyzeSettings(xmin="peak"), quiet: QuietOpt = False):
        ...  # `settings` holds --farms, --xmin, --layers, ... --max-memory as given

typer builds a command from its function's signature, so the decorator puts the
eighteen options where the command's `AnalyzeSettings` parameter stands (the one
whose default is an `AnalyzeSettings`) and calls the command with the settings
they describe. That default is the command's own (AlphaPruning fits with
xmin=peak): the help shows it, and `settings != default` says whether any
analysis option was given.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, Optional, TypeVar

import typer

from htsr_cli.cli._options import Device, Fit, FixFingers, Precision, SmallN, Xmin
from htsr_cli.errors import HtsrError
from htsr_cli.settings import AnalyzeSettings, FarmsSettings

FarmsOpt = Annotated[bool, typer.Option("--farms", help="Also compute alpha_farms (FARMS: fixed-aspect-ratio subsampling).")]
XminOpt = Annotated[Xmin, typer.Option("--xmin", help="How the power-law tail start xmin is chosen (algorithms: ks = WeightWatcher, median = TempBalance, peak = AlphaPruning).")]
LayersOpt = Annotated[Optional[str], typer.Option("--layers", help="Regex on module name or tensor key; only matching matrices are analyzed.", show_default="all")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where eigenvalues are computed (auto: CUDA when there is one).")]
MinEvalsOpt = Annotated[int, typer.Option("--min-evals", help="Skip layers with fewer eigenvalues than this.")]
ConvScaleOpt = Annotated[float, typer.Option("--conv-scale", help="Multiply conv eigenvalues (0.5 reproduces WeightWatcher's numbers).")]
FarmsWindowOpt = Annotated[int, typer.Option("--farms-window", help="FARMS window size (clamped to each matrix's short side).")]
FarmsQOpt = Annotated[float, typer.Option("--farms-q", help="FARMS window aspect ratio Q (cols / rows).")]
FarmsStepsOpt = Annotated[int, typer.Option("--farms-steps", help="FARMS windows per dimension.")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", help="mixed: float32 Gram, float64 eigensolver (alpha within 1e-3 of float64); float64: all float64; float32: float32 eigensolver, redone in float64 per layer when not accurate enough.")]
MaxMemoryOpt = Annotated[Optional[str], typer.Option("--max-memory", help="Memory one layer's solve may use (8GB, 512MiB, 16G); layers needing more are skipped.", show_default="the memory available")]
FitOpt = Annotated[Fit, typer.Option("--fit", help="tpl / e_tpl: also fit WeightWatcher's truncated power law (alpha_tpl, lambda_tpl; slow: a numerical fit per xmin candidate). See docs/weightwatcher.md.")]
FixFingersOpt = Annotated[FixFingers, typer.Option("--fix-fingers", help="clip_xmax: WeightWatcher's finger clipping, refit without up to 9 top outliers when that lowers alpha by more than 1 (raw_alpha, num_fingers).")]
SmallNOpt = Annotated[SmallN, typer.Option("--small-n", help="ww: fit spectra of fewer than 20 eigenvalues as WeightWatcher 0.7.7 does (needs --xmin ks).")]
MpFitOpt = Annotated[bool, typer.Option("--mp-fit", help="Also fit the Marchenko-Pastur law as WeightWatcher does (sigma_mp, bulk edges, num_spikes, mp_softrank).")]
RandomizeOpt = Annotated[bool, typer.Option("--randomize", help="Also compare each layer's ESD with that of its element-wise shuffled weights (rand_distance, ww_softrank, correlation traps).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of --randomize's shuffles (the same seed gives the same numbers).")]
DetxOpt = Annotated[bool, typer.Option("--detx", help="Also find WeightWatcher's detX tail (detx_num, detx_val) and its distance from alpha's xmin.")]

Command = TypeVar("Command", bound=Callable[..., Any])
Settings = TypeVar("Settings")


def _option_defaults(defaults: AnalyzeSettings) -> dict[str, tuple[Any, Any]]:
    """Each option's parameter name -> (annotation, default), in the order `--help` lists them."""
    farms = defaults.farms or FarmsSettings()  # window, q and steps show their defaults without --farms too
    return {
        "farms": (FarmsOpt, defaults.farms is not None),
        "xmin": (XminOpt, Xmin(defaults.xmin)),
        "layers": (LayersOpt, defaults.layers),
        "device": (DeviceOpt, Device(defaults.device)),
        "min_evals": (MinEvalsOpt, defaults.min_evals),
        "conv_scale": (ConvScaleOpt, defaults.conv_scale),
        "farms_window": (FarmsWindowOpt, farms.window),
        "farms_q": (FarmsQOpt, farms.q),
        "farms_steps": (FarmsStepsOpt, farms.steps),
        "precision": (PrecisionOpt, Precision(defaults.precision)),
        "max_memory": (MaxMemoryOpt, defaults.max_memory),
        "fit": (FitOpt, Fit(defaults.fit)),
        "fix_fingers": (FixFingersOpt, FixFingers(defaults.fix_fingers)),
        "small_n": (SmallNOpt, SmallN(defaults.small_n)),
        "mp_fit": (MpFitOpt, defaults.mp_fit),
        "randomize": (RandomizeOpt, defaults.randomize),
        "seed": (SeedOpt, defaults.seed),
        "detx": (DetxOpt, defaults.detx),
    }



OPTION_NAMES = tuple(_option_defaults(AnalyzeSettings()))


def settings_from_options(defaults: AnalyzeSettings, values: dict[str, Any]) -> AnalyzeSettings:
    """The settings the options describe (checked by `AnalyzeSettings`: a bad value is an InvalidSetting).

    A FARMS option without --farms is refused rather than implied: --farms doubles the
    analysis time, which a typo'd or left-over --farms-steps should not switch on silently.
    """
    if not values["farms"]:
        unused = FarmsSettings()
        for name, default in (("farms_window", unused.window), ("farms_q", unused.q), ("farms_steps", unused.steps)):
            if values[name] != default:
                flag = "--" + name.replace("_", "-")
                raise HtsrError(f"{flag} {values[name]}: only tunes FARMS; add --farms to compute alpha_farms")
    farms = FarmsSettings(values["farms_window"], values["farms_q"], values["farms_steps"]) if values["farms"] else None
    return replace(
        defaults,
        xmin=values["xmin"].value,
        farms=farms,
        device=values["device"].value,
        precision=values["precision"].value,
        conv_scale=values["conv_scale"],
        min_evals=values["min_evals"],
        layers=values["layers"],
        max_memory=values["max_memory"],
        fit=values["fit"].value,
        fix_fingers=values["fix_fingers"].value,
        small_n=values["small_n"].value,
        mp_fit=values["mp_fit"],
        randomize=values["randomize"],
        seed=values["seed"],
        detx=values["detx"],
    )


def option_group(
    kind: type[Settings],
    options: Callable[[Settings], dict[str, tuple[Any, Any]]],
    build: Callable[[Settings, dict[str, Any]], Settings],
) -> Callable[[Command], Command]:
    """A decorator that gives a command a group of options declared once.

    It puts the options `options(default)` lists (name -> (annotation, default))
    where the command's one parameter whose default is a `kind` stands, and calls
    the command with `build(default, values)`: one typed settings object instead
    of the options one by one.
    """
    names = tuple(options(kind()))

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)  # typer needs the annotations themselves
        targets = [parameter for parameter in signature.parameters.values() if isinstance(parameter.default, kind)]
        if len(targets) != 1:
            article = "an" if kind.__name__[0] in "AEIOU" else "a"
            raise TypeError(f"{command.__name__} needs one parameter whose default is {article} {kind.__name__}, not {len(targets)}")
        [target] = targets
        defaults = target.default
        parameters = []
        for parameter in signature.parameters.values():
            if parameter is target:
                parameters += [
                    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
                    for name, (annotation, default) in options(defaults).items()
                ]
            else:
                # keyword-only: typer passes every value by name, and keyword-only options may sit anywhere
                parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            grouped = {name: values.pop(name) for name in names}
            return command(**values, **{target.name: build(defaults, grouped)})

        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
        return run  # type: ignore[return-value]

    return decorate


# Give a command the shared analysis options, in place of its one parameter whose default is an `AnalyzeSettings`.
analysis_options = option_group(AnalyzeSettings, _option_defaults, settings_from_options)
