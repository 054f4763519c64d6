"""Hyperparameter sweeps, repeated seeds and cross-validation on Optuna, on one machine or many.

    python -m src.sweep --config configs/quickstart.yaml --space configs/sweeps/quickstart_lr.yaml --n_trials 8
    python -m src.sweep --config configs/quickstart.yaml --seeds 5        # one config, 5 seeds: mean ± std
    python -m src.sweep --config configs/quickstart.yaml --folds 5        # 5-fold cross-validation on train
    python -m src.sweep ... --storage postgresql://user:pw@host/db --name lr1   # the same command on many machines

Each trial is `python -m src.cli fit` in its own process, with the parameters this process sampled passed as flags
(so every rank of a multi-GPU trial sees the same values), writing `logs/<experiment>/sweep_<name>/trial_<N>/`.
Its `OptunaPruning` callback reports the objective after every validation, so the pruner can stop it early.
The study lives in a journal file in the sweep directory (default) or in `--storage`; every worker runs trials
until the study holds `--n_trials` finished ones, and rerunning a command continues its sweep: a trial left
running by a stopped worker is marked failed and queued again with the same parameters.
"""

import argparse
import copy
import csv
import ctypes
import difflib
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from src.callbacks.optuna_pruning import PRUNED_KEY
from src.utils.atomic import atomic_write
from src.utils.errors import UserInputError
from src.utils.optuna_study import DEFINITION_ATTR, STORAGE_ENV, hide_password, make_pruner, open_storage

HEARTBEAT_S = 30  # a worker stamps its running trial this often ...
STALE_AFTER_S = 150  # ... and a trial unstamped this long (its worker on another machine is gone) is retried
MAX_RETRIES = 2  # per trial: one that keeps killing its worker is given up
WORKER_ATTR, HEARTBEAT_ATTR, SURPLUS_ATTR = "sweep:worker", "sweep:heartbeat", "sweep:surplus"
RESULT_ATTRS = ("best_value", "best_checkpoint", "test_metrics", "startup_s", "error")  # a retry starts without
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "grid": optuna.samplers.GridSampler}
DISTRIBUTION_FIELDS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
                       "categorical": {"choices"}}
# where and how a worker runs, not what it computes: these may differ between the workers of one sweep
PLACEMENT_KEYS = ("trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
                  "trainer.logger", "trainer.enable_progress_bar", "data.num_workers", "data.cache_dir",
                  "data.tokenize_num_proc", "progress_bar")
HOST = socket.gethostname()

warnings.filterwarnings("ignore", category=ExperimentalWarning)  # optuna's matplotlib plots and retry helpers


class TrialFailed(Exception):
    """The trial process failed; the message is its error line. Optuna records the trial as FAIL."""


class SurplusTrial(Exception):
    """Other workers already hold the remaining trials of the study; this trial never ran."""


@dataclass
class Sweep:
    """What every trial of one sweep shares: the parameters to sample, settings fixed for all trials, queued
    trials (one per seed or fold) and the objective."""

    name: str
    mode: str  # "space", "seeds" or "folds"
    params: dict[str, BaseDistribution]
    n_trials: int
    metric: str
    direction: str  # "maximize" or "minimize"
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    fixed: dict[str, Any] = field(default_factory=dict)
    queued: list[dict[str, Any]] = field(default_factory=list)


# ----- command line ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m src.sweep", allow_abbrev=False,
        description="Run many `src.cli fit` trials as one Optuna study. Further --section.key value flags are "
                    "passed to every trial.")
    parser.add_argument("--config", action="append", required=True, help="experiment config(s), stacked as in src.cli")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--space", help="search space YAML: config keys mapped to distributions (configs/sweeps/)")
    mode.add_argument("--seeds", type=int, help="run the config with K seeds; report mean, std and 95%% CI")
    mode.add_argument("--folds", type=int, help="K-fold cross-validation on train (data.num_folds / data.fold)")
    parser.add_argument("--n_trials", type=int, help="finished trials the study should hold (--space only; "
                                                     "default for a grid sampler: the grid size)")
    parser.add_argument("--name", help="sweep name: logs/<experiment>/sweep_<name>/ and the study name; default: "
                                       "the space file's name, seedsK or foldsK")
    parser.add_argument("--storage", help="Optuna RDB URL shared by workers on several machines; default: a journal "
                                          "file in the sweep directory")
    parser.add_argument("--metric", help="objective; default: the config's checkpoint.monitor (val/acc)")
    parser.add_argument("--direction", choices=("maximize", "minimize"), help="default: from checkpoint.mode")
    args, extras = parser.parse_known_args(argv)
    stray = next((arg for arg in extras[:1] if not arg.startswith("--")), None)
    if stray is not None:
        raise UserInputError(f"unexpected argument '{stray}': config flags look like --section.key value")
    return args, extras


def flag_keys(extras: list[str]) -> set[str]:
    return {arg[2:].split("=", 1)[0].rstrip("+") for arg in extras if arg.startswith("--")}


def as_flags(values: dict[str, Any]) -> list[str]:
    """`--key value` pairs; values as JSON, which the CLI reads as YAML (strings quoted, so "1" stays a string)."""
    return [item for key, value in values.items() for item in (f"--{key}", json.dumps(value))]


# ----- the search space ---------------------------------------------------------------------------------------
def load_space(path: str) -> tuple[dict[str, BaseDistribution], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(distributions, sampler spec, pruner spec, the file's content) from a space file."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"space file '{path}' does not exist")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise UserInputError(f"space file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"space file '{path}' must map config keys to distributions, like "
                             "model.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}")
    raw = dict(raw)
    sampler, pruner = spec(raw.pop("sampler", "tpe"), "sampler"), spec(raw.pop("pruner", "median"), "pruner")
    if not raw:
        raise UserInputError(f"space file '{path}' defines no parameters")
    return {key: distribution(key, value) for key, value in raw.items()}, sampler, pruner, raw


def spec(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"type": value}
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return dict(value)
    raise UserInputError(f"{what} must be a name or a mapping with a type, like {what}: {{type: random, seed: 0}}")


def distribution(key: str, entry: Any) -> BaseDistribution:
    example = "{type: float, low: 1.0e-5, high: 1.0e-3, log: true} or {type: categorical, choices: [8, 16]}"
    if not isinstance(entry, dict) or entry.get("type") not in DISTRIBUTION_FIELDS:
        got = entry.get("type") if isinstance(entry, dict) else entry
        raise UserInputError(f"space key {key}: expected a distribution with type float, int or categorical, like "
                             f"{example} (got {got!r})")
    kind, values = entry["type"], {k: v for k, v in entry.items() if k != "type"}
    unknown = sorted(set(values) - DISTRIBUTION_FIELDS[kind])
    if unknown:
        raise UserInputError(f"space key {key}: unknown field {unknown[0]!r} for type {kind} "
                             f"(allowed: {', '.join(sorted(DISTRIBUTION_FIELDS[kind]))})")
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
        cls = FloatDistribution if kind == "float" else IntDistribution
        return cls(low, high, log=log, step=step if step is not None or kind == "float" else 1)
    except ValueError as err:
        raise UserInputError(f"space key {key}: {err}") from None


def _number(value: Any, number: type, name: str) -> float | int:
    try:  # YAML reads 1e-5 (no dot) as a string
        parsed = number(value) if isinstance(value, str) and number is float else value
    except ValueError:
        parsed = value
    if isinstance(parsed, bool) or not isinstance(parsed, (int, float)) or (number is int and parsed != int(parsed)):
        raise ValueError(f"{name} must be {'a number' if number is float else 'an integer'} (got {value!r})")
    return number(parsed)


def make_sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    kwargs = dict(sweep.sampler)
    kind = kwargs.pop("type")
    if kind not in SAMPLERS:
        raise UserInputError(f"sampler type '{kind}' is not one of {', '.join(SAMPLERS)}")
    if kind == "grid":
        kwargs["search_space"] = grid_values(sweep.params)
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


# ----- the trial config -----------------------------------------------------------------------------------------
def resolve_config(config_args: list[str], extras: list[str]) -> dict[str, Any]:
    """The complete config a trial starts from, as `python -m src.cli fit ... --print_config` shows it."""
    from src.cli import main as cli_main  # torch, lightning, transformers: only once the sweep's arguments are OK

    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            cli_main(["fit", *config_args, *extras, "--print_config"])
        except SystemExit as exit_:
            code = exit_.code
    if code not in (None, 0):
        lines = [line for line in (err.getvalue() + str(code)).splitlines() if line.strip()]
        message = next((line for line in lines if line.startswith("error:")), lines[0] if lines else str(code))
        raise UserInputError(f"the trial config does not parse: {message.removeprefix('error: ')}")
    return yaml.safe_load(out.getvalue())


def flatten(config: dict[str, Any], prefix: str = "", leaves_only: bool = False) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            if not leaves_only:
                flat[path] = value
            flat.update(flatten(value, f"{path}.", leaves_only))
        else:
            flat[path] = value
    return flat


def set_key(config: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[last] = value


def check_keys(keys: list[str], config_keys: set[str], what: str) -> None:
    for key in keys:
        if key in config_keys:
            continue
        leaf = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(key, sorted(config_keys), n=3, cutoff=0.6)
        close += sorted(k for k in config_keys if k.rsplit(".", 1)[-1] == leaf and k not in close)
        hint = f"closest: {', '.join(close[:4])}" if close else "see --print_config of src.cli for the keys"
        raise UserInputError(f"{what} '{key}' is not a config key ({hint})")


def build_sweep(args: argparse.Namespace, config: dict[str, Any], extras: list[str]) -> Sweep:
    keys = set(flatten(config))
    monitor, mode = config.get("checkpoint", {}).get("monitor"), config.get("checkpoint", {}).get("mode", "max")
    metric = args.metric or monitor
    if not metric:
        raise UserInputError("the config has no checkpoint.monitor: pass --metric, e.g. --metric val/acc")
    if args.metric and args.metric != monitor and not args.direction:
        raise UserInputError(f"--metric {args.metric}: also pass --direction maximize or --direction minimize")
    direction = args.direction or ("minimize" if mode == "min" else "maximize")
    fixed: dict[str, Any] = {}
    if metric != monitor or direction != ("minimize" if mode == "min" else "maximize"):
        # the best checkpoint (and the test after fit) follow the objective
        fixed.update({"checkpoint.monitor": metric, "checkpoint.mode": "max" if direction == "maximize" else "min"})
    if args.space:
        params, sampler, pruner, _ = load_space(args.space)
        check_keys(list(params), keys, "space key")
        name, queued = args.name or Path(args.space).stem, []
        n_trials = args.n_trials
        if sampler["type"] == "grid":
            size = math.prod(len(values) for values in grid_values(params).values())
            if n_trials is not None and n_trials > size:
                raise UserInputError(f"--n_trials {n_trials} is more than the {size} points of the grid: pass "
                                     f"--n_trials {size} or leave it out")
            n_trials = size if n_trials is None else n_trials
        elif n_trials is None:
            raise UserInputError("--n_trials is required with --space (how many trials the study should hold)")
    else:
        if args.n_trials is not None:
            raise UserInputError("--n_trials goes with --space; --seeds K and --folds K run K trials")
        n_trials = args.seeds if args.seeds is not None else args.folds
        what = "--seeds" if args.seeds is not None else "--folds"
        if n_trials < 2:
            raise UserInputError(f"{what} {n_trials}: pass at least 2 (a spread needs two runs)")
        if args.seeds is not None:
            base = config.get("seed_everything")
            base = base if isinstance(base, int) and not isinstance(base, bool) else 0
            key, values, name = "seed_everything", [base + i for i in range(n_trials)], f"seeds{n_trials}"
        else:
            if "data.num_folds" not in keys:
                raise UserInputError("--folds needs a data module with data.num_folds and data.fold (K-fold "
                                     "validation); this one has neither")
            key, values, name = "data.fold", list(range(n_trials)), f"folds{n_trials}"
            fixed["data.num_folds"] = n_trials
        params, queued = {key: CategoricalDistribution(values)}, [{key: value} for value in values]
        sampler, pruner, name = {"type": "random", "seed": 0}, {"type": "none"}, args.name or name
    if n_trials < 1:
        raise UserInputError(f"--n_trials {n_trials}: pass at least 1")
    clash = sorted(flag_keys(extras) & (set(params) | set(fixed)))
    if clash:
        raise UserInputError(f"--{clash[0]} is set on the command line but the sweep sets it in every trial: "
                             "drop the flag")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserInputError(f"--name '{name}': use letters, digits, '_', '-' and '.'")
    sweep = Sweep(name, "space" if args.space else "seeds" if args.seeds is not None else "folds", params,
                  n_trials, metric, direction, sampler, pruner, fixed, queued)
    make_sampler(sweep), make_pruner(sweep.pruner)  # bad sampler / pruner settings fail now, not in a trial
    return sweep


def experiment_dirs(config: dict[str, Any]) -> tuple[str, Path]:
    """(experiment name, TensorBoard save_dir) from the config's logger."""
    logger = config.get("trainer", {}).get("logger")
    if not (isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("TensorBoardLogger")):
        raise UserInputError("a sweep writes one TensorBoard run per trial: the config's trainer.logger must be "
                             f"lightning.pytorch.loggers.TensorBoardLogger (got {logger!r})")
    init = logger.get("init_args", {})
    return str(init.get("name") or "default"), Path(init.get("save_dir") or "logs")


# ----- the study ----------------------------------------------------------------------------------------------
def definition(sweep: Sweep, config: dict[str, Any]) -> dict[str, Any]:
    """What makes two sweeps the same one (JSON, stored with the study)."""
    comparable = {key: value for key, value in flatten(config, leaves_only=True).items()
                  if not key.startswith(PLACEMENT_KEYS) and key not in sweep.params}
    return {"mode": sweep.mode, "space": {k: optuna.distributions.distribution_to_json(d)
                                          for k, d in sweep.params.items()},
            "sampler": sweep.sampler, "pruner": sweep.pruner, "metric": sweep.metric, "direction": sweep.direction,
            "fixed": sweep.fixed, "config": json.loads(json.dumps(comparable, default=str))}


def open_study(sweep: Sweep, storage: optuna.storages.BaseStorage, study_name: str, where: str,
               wanted: dict[str, Any]) -> optuna.Study:
    """Create the study, or join the one of that name after checking it is the same sweep."""
    kwargs = {"study_name": study_name, "storage": storage, "sampler": make_sampler(sweep),
              "pruner": make_pruner(sweep.pruner)}
    try:
        study = optuna.load_study(**kwargs)
    except KeyError:  # no such study yet
        try:
            study = optuna.create_study(direction=sweep.direction, **kwargs)
            for params in sweep.queued:  # one trial per seed / fold, run in this order
                study.enqueue_trial(params)
            study.set_user_attr(DEFINITION_ATTR, wanted)  # last: other workers wait for it
            return study
        except DuplicatedStudyError:  # another worker created it a moment ago
            study = optuna.load_study(**kwargs)
    for _ in range(60):  # its creator is still queueing trials
        found = study.user_attrs.get(DEFINITION_ATTR)
        if found is not None:
            break
        time.sleep(0.5)
    else:
        raise UserInputError(f"study '{study_name}' in {where} was not made by src.sweep: pick another --name")
    for part, label in (("mode", "mode"), ("space", "space"), ("sampler", "sampler"), ("pruner", "pruner"),
                        ("metric", "metric"), ("direction", "direction"), ("fixed", "fixed settings"),
                        ("config", "config")):
        if found.get(part) != wanted[part]:
            detail = _difference(found.get(part), wanted[part])
            raise UserInputError(f"sweep '{sweep.name}' already exists in {where} with a different {label} "
                                 f"({detail}): pick another --name, or delete the study to start over")
    return study


def _difference(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        key = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        return f"{key}: {_short(old.get(key))} there, {_short(new.get(key))} here"
    return f"{_short(old)} there, {_short(new)} here"


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) < 80 else text[:77] + "..."


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    return {number for t in trials for number in RetryHeartbeatStaleTrialCallback.retry_history(t)}


def counts(t: FrozenTrial, retried: set[int]) -> bool:
    """Whether a finished trial counts toward --n_trials: not one that was retried or never ran."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and t.number not in retried and not t.system_attrs.get(SURPLUS_ATTR)


# ----- a worker -------------------------------------------------------------------------------------------------
class Worker:
    """Runs trials of one study, one process at a time, until the study holds `sweep.n_trials` finished trials."""

    def __init__(self, sweep: Sweep, study: optuna.Study, storage: optuna.storages.BaseStorage, storage_arg: str,
                 study_name: str, sweep_dir: Path, trial_args: list[str], config: dict[str, Any]) -> None:
        self.sweep, self.study, self.storage, self.storage_arg = sweep, study, storage, storage_arg
        self.study_name, self.sweep_dir, self.trial_args, self.config = study_name, sweep_dir, trial_args, config
        self.study_id = storage.get_study_id_from_name(study_name)
        self.current: int | None = None  # trial id of the running trial
        self.ran = 0

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def run(self) -> None:
        self.fail_stale_trials()
        if self.quota_reached():
            return
        try:
            self.study.optimize(self.objective, catch=(TrialFailed, SurplusTrial), callbacks=[self.after_trial],
                                gc_after_trial=False)
        except KeyboardInterrupt:
            interrupted = self.storage.get_trial(self.current) if self.current is not None else None
            if interrupted is not None and interrupted.state == TrialState.FAIL:  # so optimize recorded it
                RetryHeartbeatStaleTrialCallback(MAX_RETRIES)(self.study, interrupted)  # run it again next time
            raise

    def quota_reached(self) -> bool:
        """Finished trials plus those other workers are running reach --n_trials (queued ones need a worker)."""
        trials = self.study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        taken = sum(counts(t, retried) for t in trials) + sum(t.state == TrialState.RUNNING for t in trials)
        return taken >= self.sweep.n_trials

    def surplus(self, number: int) -> bool:
        """Two workers that asked for a trial at the same moment may overshoot --n_trials: the higher number yields.
        Every trial created after this one was created saw it, so counting the earlier ones decides exactly."""
        trials = self.study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        ahead = sum(1 for t in trials if t.number != number and (
            counts(t, retried) or (t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number < number)))
        return ahead >= self.sweep.n_trials

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.current = None
        self.fail_stale_trials()
        write_reports(self.study, self.sweep, self.sweep_dir, self.config)
        if trial.system_attrs.get(SURPLUS_ATTR) or self.quota_reached():
            study.stop()

    def fail_stale_trials(self) -> None:
        """Mark FAIL the trials whose worker is gone (its process on this machine, or its heartbeat), and queue each
        again with the same parameters (Optuna's retry callback, which keeps a grid point's id)."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            reason = stale_reason(t)
            if reason is None:
                continue
            trial_id = self.trial_id(t.number)
            try:
                self.storage.set_trial_user_attr(trial_id, "error", f"its worker stopped ({reason})")
                self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue  # another worker got there first
            RetryHeartbeatStaleTrialCallback(MAX_RETRIES)(self.study, self.storage.get_trial(trial_id))
            print(f"trial {t.number} was left running ({reason}): marked FAIL and queued again", flush=True)

    def objective(self, trial: optuna.Trial) -> float:
        number, trial_id = trial.number, self.trial_id(trial.number)
        self.current = trial_id
        if self.surplus(number):
            self.storage.set_trial_system_attr(trial_id, SURPLUS_ATTR, True)
            raise SurplusTrial("the study's remaining trials are taken by other workers")
        self.beat(trial_id)
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(self.storage.get_trial(trial_id)) is not None:
            for key in RESULT_ATTRS:  # copied from the failed attempt by the retry callback
                trial.set_user_attr(key, None)
            self.storage.set_trial_system_attr(trial_id, PRUNED_KEY, False)
        params = {key: suggest(trial, key, dist) for key, dist in self.sweep.params.items()}
        run_dir = self.sweep_dir / f"trial_{number}"
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "trial.log"
        for key, value in (("run_dir", str(run_dir)), ("log", str(log))):
            trial.set_user_attr(key, value)
        started = time.time()
        command = [sys.executable, "-m", "src.cli", *self.trial_args, *as_flags(self.sweep.fixed), *as_flags(params),
                   "--trainer.logger.init_args.save_dir", str(self.sweep_dir.parent),
                   "--trainer.logger.init_args.name", self.sweep_dir.name,
                   "--trainer.logger.init_args.version", run_dir.name,
                   "--trainer.callbacks+=src.callbacks.optuna_pruning.OptunaPruning",
                   f"--trainer.callbacks.init_args.study_name={self.study_name}",
                   f"--trainer.callbacks.init_args.trial_id={trial_id}",
                   f"--trainer.callbacks.init_args.monitor={self.sweep.metric}",
                   f"--trainer.callbacks.init_args.launched_at={started}"]
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        print(f"trial {number} started: {shown} → {run_dir}", flush=True)
        try:
            code = self.run_process(command, log, trial_id)
        except BaseException:
            trial.set_user_attr("error", "interrupted")
            raise
        trial.set_user_attr("duration_s", round(time.time() - started, 1))
        result = self.storage.get_trial(trial_id)
        value = result.user_attrs.get("best_value")
        if code == 0 and result.system_attrs.get(PRUNED_KEY):
            print(f"trial {number} PRUNED after {len(result.intermediate_values)} validations", flush=True)
            raise optuna.TrialPruned()
        error = None
        if code != 0:
            error = error_line(log, code)
        elif value is None:
            error = f"the trial never logged {self.sweep.metric}: check --metric and that validation runs"
        if error is not None:
            trial.set_user_attr("error", error)
            print(f"trial {number} FAIL: {error} (log: {log})", flush=True)
            raise TrialFailed(error)
        print(f"trial {number} COMPLETE: {self.sweep.metric} {value:.4f} in {time.time() - started:.0f} s", flush=True)
        return value

    def beat(self, trial_id: int) -> None:
        self.storage.set_trial_system_attr(trial_id, WORKER_ATTR, {"host": HOST, "pid": os.getpid()})
        self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def run_process(self, command: list[str], log: Path, trial_id: int) -> int:
        env = {**os.environ, STORAGE_ENV: self.storage_arg, "PYTHONUNBUFFERED": "1"}
        with open(log, "w") as out:
            out.write(" ".join(command[1:]) + "\n\n")
            out.flush()
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       preexec_fn=die_with_parent)
            try:
                while True:
                    try:
                        return process.wait(timeout=HEARTBEAT_S)
                    except subprocess.TimeoutExpired:
                        self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def suggest(trial: optuna.Trial, key: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def die_with_parent() -> None:
    """In the trial process before it starts (Linux): get SIGKILL when the sweep process dies, so a killed sweep
    leaves no trial running on its own."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def stale_reason(trial: FrozenTrial) -> str | None:
    worker = trial.system_attrs.get(WORKER_ATTR) or {}
    if worker.get("host") == HOST and worker.get("pid") != os.getpid() and not pid_alive(worker.get("pid")):
        return f"its worker process {worker.get('pid')} on {HOST} is gone"
    last = trial.system_attrs.get(HEARTBEAT_ATTR) or (trial.datetime_start.timestamp() if trial.datetime_start else 0)
    if time.time() - last > STALE_AFTER_S:
        return f"no heartbeat from {worker.get('host', 'its worker')} for {time.time() - last:.0f} s"
    return None


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process nobody has reaped yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def error_line(log: Path, code: int) -> str:
    """The trial's one-line error: the CLI's `error: ...`, else the exception line of a traceback."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    found = next((line for line in reversed(lines) if line.startswith("error:")), None)
    if found is None:
        found = next((line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)),
                     None)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"killed by {name}" + (f" after: {found}" if found else "")
    return found or f"exited with code {code}"


# ----- results --------------------------------------------------------------------------------------------------
def result_rows(study: optuna.Study, sweep: Sweep) -> list[dict[str, Any]]:
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    rows = []
    for t in trials:
        if t.system_attrs.get(SURPLUS_ATTR):
            continue
        state = t.state.name + (" (retried)" if t.number in retried and t.state == TrialState.FAIL else "")
        row = {"trial": t.number, "state": state}
        row.update({key: t.params.get(key) for key in sweep.params})
        row[sweep.metric] = t.user_attrs.get("best_value")
        row.update(t.user_attrs.get("test_metrics") or {})
        row.update({"startup_s": t.user_attrs.get("startup_s"), "duration_s": t.user_attrs.get("duration_s"),
                    "worker": (t.system_attrs.get(WORKER_ATTR) or {}).get("host"),
                    "run_dir": t.user_attrs.get("run_dir"), "error": t.user_attrs.get("error"),
                    "log": t.user_attrs.get("log") if t.state == TrialState.FAIL else None})
        rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]], sweep: Sweep) -> list[dict[str, Any]]:
    """Mean, sample std and a t-distribution 95% confidence interval per metric over the COMPLETE trials."""
    from scipy import stats

    done = [row for row in rows if row["state"] == "COMPLETE"]
    names = [sweep.metric, *dict.fromkeys(k for row in done for k in row if str(k).startswith("test/"))]
    table = []
    for name in names:
        values = [float(row[name]) for row in done if row.get(name) is not None]
        if not values:
            continue
        n, mean = len(values), sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
        half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else float("nan")
        table.append({"metric": name if name != sweep.metric else f"{name} (best)", "n": n, "mean": mean,
                      "std": std, "ci95_low": mean - half, "ci95_high": mean + half})
    return table


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial yet
        return None


def best_config(config: dict[str, Any], sweep: Sweep, trial: FrozenTrial) -> dict[str, Any]:
    """The complete config of `trial` as an ordinary run of the experiment (logs/<experiment>/version_N)."""
    best = copy.deepcopy(config)
    for key, value in {**sweep.fixed, **trial.params}.items():
        set_key(best, key, value)
    return best


def write_reports(study: optuna.Study, sweep: Sweep, sweep_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """results.csv, results.md, best.yaml, summary.csv (seeds, folds) and plots; all rewritten from the study, so
    any worker can write them (replace-on-write: a reader sees one whole version)."""
    rows = result_rows(study, sweep)
    best = best_trial(study)
    table = summary(rows, sweep) if sweep.mode != "space" else []
    tests = dict.fromkeys(key for row in rows for key in row if key.startswith("test/"))
    columns = ["trial", "state", *sweep.params, sweep.metric, *tests, "startup_s", "duration_s", "worker", "run_dir",
               "error", "log"]
    written: dict[str, Any] = {"rows": rows, "best": best, "summary": table}
    try:
        with atomic_write(sweep_dir / "results.csv") as temp, open(temp, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        if table:
            with atomic_write(sweep_dir / "summary.csv") as temp, open(temp, "w", newline="") as out:
                writer = csv.DictWriter(out, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
        if best is not None:
            header = (f"# The best trial ({best.number}, {sweep.metric} {best.value:.4f}) of sweep {sweep.name}, as a "
                      f"plain run:\n#   python -m src.cli fit --config {sweep_dir / 'best.yaml'}\n")
            with atomic_write(sweep_dir / "best.yaml") as temp:
                temp.write_text(header + yaml.safe_dump(best_config(config, sweep, best), sort_keys=False))
        notes = write_plots(study, sweep, sweep_dir)
        with atomic_write(sweep_dir / "results.md") as temp:
            temp.write_text(markdown(rows, columns, table, sweep, best, sweep_dir, notes))
    except FileNotFoundError:  # another worker rewrote the same file at this moment: its version stands
        pass
    return written


def write_plots(study: optuna.Study, sweep: Sweep, sweep_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    drawings = {"optimization_history.png": plots.plot_optimization_history}
    if sweep.mode == "space":
        drawings["param_importances.png"] = plots.plot_param_importances
    notes = []
    for filename, draw in drawings.items():
        complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
        if complete < 2:
            notes.append(f"{filename}: needs 2 COMPLETE trials")
            continue
        try:
            axes = draw(study)
        except (ValueError, RuntimeError) as err:
            notes.append(f"{filename}: not drawn ({err})")
            continue
        figure = axes.figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        with atomic_write(sweep_dir / filename) as temp:
            figure.savefig(temp, format="png", dpi=110)
        plt.close(figure)
    return notes


def markdown(rows: list[dict[str, Any]], columns: list[str], table: list[dict[str, Any]], sweep: Sweep,
             best: FrozenTrial | None, sweep_dir: Path, notes: list[str]) -> str:
    states = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    lines = [f"# Sweep {sweep.name}", "",
             f"{sweep.mode} sweep, objective {sweep.metric} ({sweep.direction}), {len(rows)} trials: "
             + ", ".join(f"{n} {state}" for state, n in states.items()), ""]
    if best is not None:
        lines += [f"Best: trial {best.number}, {sweep.metric} {best.value:.4f} "
                  f"({', '.join(f'{k}={v}' for k, v in best.params.items())}); rerun it: "
                  f"`python -m src.cli fit --config {sweep_dir / 'best.yaml'}`", ""]
    if table:
        lines += [f"## Over {sweep.mode}: mean, std, 95% confidence interval (t-distribution)", "",
                  "| metric | n | mean | std | 95% CI |", "|---|---|---|---|---|"]
        lines += [f"| {r['metric']} | {r['n']} | {r['mean']:.4f} | {r['std']:.4f} | "
                  f"[{r['ci95_low']:.4f}, {r['ci95_high']:.4f}] |" for r in table]
        lines.append("")
    lines += ["## Trials", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


# ----- main -----------------------------------------------------------------------------------------------------
def sweep_main(argv: list[str] | None = None) -> int:
    args, extras = parse_args(argv)
    if args.n_trials is not None and args.n_trials < 1:
        raise UserInputError(f"--n_trials {args.n_trials}: pass at least 1")
    config_args = [item for path in args.config for item in ("--config", path)]
    if args.space:
        load_space(args.space)  # a bad space file fails before the config is resolved
    config = resolve_config(config_args, extras)
    sweep = build_sweep(args, config, extras)
    experiment, save_dir = experiment_dirs(config)
    sweep_dir = save_dir / experiment / f"sweep_{sweep.name}"
    storage_arg = args.storage or str((sweep_dir / "journal.log").absolute())
    where = hide_password(storage_arg)
    storage = open_storage(storage_arg)
    study_name = f"{experiment}/{sweep.name}"
    study = open_study(sweep, storage, study_name, where, definition(sweep, config))
    print(f"Sweep {study_name}: {sweep.n_trials} trials, objective {sweep.metric} ({sweep.direction}), "
          f"study in {where}", flush=True)
    worker = Worker(sweep, study, storage, storage_arg, study_name, sweep_dir, ["fit", *config_args, *extras], config)
    signal.signal(signal.SIGTERM, _interrupt)  # scancel, kill: let the running trial be queued again
    try:
        worker.run()
    except KeyboardInterrupt:
        write_reports(study, sweep, sweep_dir, config)
        print("Interrupted: rerun the same command to continue the sweep", file=sys.stderr)
        return 130
    return finish(study, sweep, sweep_dir, config)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def finish(study: optuna.Study, sweep: Sweep, sweep_dir: Path, config: dict[str, Any]) -> int:
    report = write_reports(study, sweep, sweep_dir, config)
    rows, best = report["rows"], report["best"]
    counted = [row for row in rows if not row["state"].endswith("(retried)") and row["state"] != "WAITING"]
    print(f"\nSweep {sweep.name}: {len(counted)} trials ("
          + ", ".join(f"{sum(r['state'] == s for r in counted)} {s}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
                      if any(r["state"] == s for r in counted)) + f") in {sweep_dir}")
    for row in report["summary"]:
        print(f"  {row['metric']}: {row['mean']:.4f} ± {row['std']:.4f} (std; 95% CI [{row['ci95_low']:.4f}, "
              f"{row['ci95_high']:.4f}], n={row['n']})")
    if best is not None:
        print(f"Best: trial {best.number}, {sweep.metric} {best.value:.4f} "
              f"({', '.join(f'{k}={v}' for k, v in best.params.items())})\n"
              f"Rerun it: python -m src.cli fit --config {sweep_dir / 'best.yaml'}")
    print(f"Results: {sweep_dir / 'results.md'}\nView: tensorboard --logdir {sweep_dir}")
    ended = [row for row in counted if row["state"] in ("COMPLETE", "PRUNED", "FAIL")]
    if ended and all(row["state"] == "FAIL" for row in ended):
        first = min(ended, key=lambda row: row["trial"])
        raise UserInputError(f"every trial failed; the first (trial {first['trial']}): {first['error']} "
                             f"(log: {first['log']})")
    return 0


def main(argv: list[str] | None = None) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this module prints one line per trial itself
    try:
        code = sweep_main(argv)
    except UserInputError as err:
        sys.exit(f"error: {err}")
    sys.exit(code)


if __name__ == "__main__":
    main()
