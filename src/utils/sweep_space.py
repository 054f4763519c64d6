"""A sweep's search space: a YAML file mapping config keys (as in `--section.key`) to Optuna distributions.

    model.optimizer.lr: {type: float, low: 1.0e-5, high: 2.0e-4, log: true}
    data.batch_size: {type: categorical, choices: [8, 16, 32]}
    trainer.max_epochs: {type: int, low: 1, high: 4}
    sampler: tpe            # or random, grid; or {type: tpe, seed: 0, n_startup_trials: 4}
    pruner: median          # or hyperband, percentile, successive_halving, threshold, none; or {type: ..., ...}

Also here: the config keys a space may name (those of `--print_config`, plus the short form without `init_args`
that the command line accepts), and the sampler built from a space.
"""

import contextlib
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from src.utils.errors import UserInputError

FIELDS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "grid": optuna.samplers.GridSampler}
EXAMPLE = "{type: float, low: 1.0e-5, high: 1.0e-3, log: true} or {type: categorical, choices: [8, 16]}"


@dataclass
class Sweep:
    """What every trial of one sweep shares: the parameters to sample (by config key as written, with the config
    path each sets), settings fixed for all trials, trials queued up front (one per seed or fold), the objective."""

    name: str
    mode: str  # "space", "seeds" or "folds"
    params: dict[str, BaseDistribution]
    paths: dict[str, str]
    n_trials: int
    metric: str
    direction: str  # "maximize" or "minimize"
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    fixed: dict[str, Any] = field(default_factory=dict)
    queued: list[dict[str, Any]] = field(default_factory=list)


def load_space(path: str) -> tuple[dict[str, BaseDistribution], dict[str, Any], dict[str, Any]]:
    """(distributions by config key, sampler spec, pruner spec) of a space file."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"space file '{path}' does not exist")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise UserInputError(f"space file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"space file '{path}' must map config keys to distributions, like "
                             "model.optimizer.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}")
    raw = dict(raw)
    sampler, pruner = _spec(raw.pop("sampler", "tpe"), "sampler"), _spec(raw.pop("pruner", "median"), "pruner")
    if not raw:
        raise UserInputError(f"space file '{path}' defines no parameters")
    return {str(key): distribution(str(key), value) for key, value in raw.items()}, sampler, pruner


def _spec(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"type": value}
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return dict(value)
    raise UserInputError(f"{what} must be a name or a mapping with a type, like {what}: {{type: random, seed: 0}}")


def distribution(key: str, entry: Any) -> BaseDistribution:
    if not isinstance(entry, dict) or entry.get("type") not in FIELDS:
        got = entry.get("type") if isinstance(entry, dict) else entry
        raise UserInputError(f"space key {key}: expected a distribution with type float, int or categorical, like "
                             f"{EXAMPLE} (got {got!r})")
    kind, values = entry["type"], {k: v for k, v in entry.items() if k != "type"}
    unknown = sorted(set(values) - FIELDS[kind])
    if unknown:
        raise UserInputError(f"space key {key}: unknown field {unknown[0]!r} for type {kind} "
                             f"(allowed: {', '.join(sorted(FIELDS[kind]))})")
    try:
        if kind == "categorical":
            choices = values.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ValueError("choices must be a non-empty list, like choices: [8, 16, 32]")
            return CategoricalDistribution(choices)
        if "low" not in values or "high" not in values:
            raise ValueError(f"type {kind} needs low and high")
        number = float if kind == "float" else int
        low, high = (_number(values[end], number, end) for end in ("low", "high"))
        step = None if values.get("step") is None else _number(values["step"], number, "step")
        log = values.get("log", False)
        if not isinstance(log, bool):
            raise ValueError(f"log must be true or false (got {log!r})")
        if kind == "float":
            return FloatDistribution(low, high, log=log, step=step)
        return IntDistribution(low, high, log=log, step=1 if step is None else step)
    except ValueError as err:  # also optuna's: low > high, log with low <= 0, log with step
        raise UserInputError(f"space key {key}: {err}") from None


def _number(value: Any, number: type, name: str) -> float | int:
    if isinstance(value, str) and number is float:  # YAML reads 1e-5 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (number is int and value != int(value)):
        raise ValueError(f"{name} must be {'a number' if number is float else 'an integer'} (got {value!r})")
    return number(value)


def suggest(trial: optuna.Trial, key: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


def make_sampler(spec: dict[str, Any], params: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
    kwargs = dict(spec)
    kind = kwargs.pop("type")
    if kind not in SAMPLERS:
        raise UserInputError(f"sampler type '{kind}' is not one of {', '.join(SAMPLERS)}")
    if kind == "grid":
        kwargs["search_space"] = grid_values(params)
    try:
        return SAMPLERS[kind](**kwargs)
    except (TypeError, ValueError) as err:
        raise UserInputError(f"sampler {kind}: {err}") from None


def grid_values(params: dict[str, BaseDistribution]) -> dict[str, list[Any]]:
    grid = {}
    for key, dist in params.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise UserInputError(f"the grid sampler needs a list of values for {key}: make it "
                                 "{type: categorical, choices: [...]} or a linear int range")
    return grid


# ----- config keys ----------------------------------------------------------------------------------------------
def config_paths(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Every key of a `--print_config` config (sections and values) mapped to its path; a key under a class's
    `init_args` also in the short form the command line accepts (`model.optimizer.lr`)."""
    paths: dict[str, str] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        paths[path] = path
        if isinstance(value, dict):
            paths.update(config_paths(value, f"{path}."))
    for key, path in list(paths.items()):
        short = key.replace(".init_args.", ".")
        paths.setdefault(short, path)
    return paths


def leaves(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[last] = value


def check_keys(keys: list[str], config: dict[str, Any], what: str) -> None:
    """A key the config does not have fails, naming the closest settings (`model.lrr`: `model.optimizer.lr`)."""
    paths, values = config_paths(config), set(leaves(config))
    settings = sorted(key for key, path in paths.items() if path in values and ".init_args." not in key)
    for key in keys:
        if key in paths:
            continue
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in settings if k.rsplit(".", 1)[-1] in (leaf, leaf[:-1])]
        close += [k for k in difflib.get_close_matches(key, settings, n=3, cutoff=0.6) if k not in close]
        hint = f"closest: {', '.join(close[:3])}" if close else "see the keys of python -m src.cli fit --print_config"
        raise UserInputError(f"{what} '{key}' is not a config key ({hint})")
