"""Hyperparameter sweeps, repeated seeds and cross-validation on Optuna, on one machine or many.

    python -m src.sweep --config configs/quickstart.yaml --space configs/sweeps/quickstart_lr.yaml --n_trials 8
    python -m src.sweep --config configs/quickstart.yaml --seeds 5        # one config, 5 seeds: mean ± std
    python -m src.sweep --config configs/quickstart.yaml --folds 5        # 5-fold cross-validation on train
    python -m src.sweep ... --storage postgresql://user:pw@host/db --name lr1   # the same command on many machines

Each trial is `python -m src.cli fit` in its own process, with the parameters this process sampled passed as flags
(every rank of a multi-GPU trial sees the same values), writing `logs/<experiment>/sweep_<name>/trial_<N>/`. Its
OptunaPruning callback reports the objective after every validation, so the pruner can stop it early.
The study lives in a journal file in the sweep directory (default) or in `--storage`. Every worker runs trials until
the study holds `--n_trials` finished ones; rerunning a command continues its sweep, and a trial left running by a
stopped worker is marked failed and queued again with the same parameters.
"""

import argparse
import ctypes
import io
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from src.utils.errors import UserInputError
from src.utils.optuna_study import (
    DEFINITION_ATTR,
    HEARTBEAT_ATTR,
    PRUNED_KEY,
    STORAGE_ENV,
    SURPLUS_ATTR,
    WORKER_ATTR,
    counts,
    hide_password,
    make_pruner,
    open_storage,
    retried_numbers,
    retry,
    retry_history,
)
from src.utils.sweep_report import RETRIED, params_text, write_reports
from src.utils.sweep_space import (
    Sweep,
    check_keys,
    config_paths,
    grid_values,
    leaves,
    load_space,
    make_sampler,
    suggest,
)

HEARTBEAT_S = 30  # a worker stamps its running trial this often ...
STALE_AFTER_S = 150  # ... and a trial unstamped this long (its worker on another machine is gone) is retried
MAX_RETRIES = 2  # per trial: one that keeps killing its worker is given up
RESULT_ATTRS = ("best_value", "best_checkpoint", "test_metrics", "startup_s", "error")  # a retry starts without
# where and how a worker runs, not what it computes: these may differ between the workers of one sweep
PLACEMENT_KEYS = ("trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
                  "trainer.logger", "trainer.enable_progress_bar", "data.num_workers", "data.cache_dir",
                  "data.tokenize_num_proc")
HOST = socket.gethostname()


class TrialFailed(Exception):
    """The trial process failed; the message is its error line. Optuna records the trial as FAIL."""


class SurplusTrial(Exception):
    """Other workers already hold the remaining trials of the study; this trial never ran."""


class SweepFailed(Exception):
    """Every trial failed: the message names the first error and its log."""


# ----- command line ------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other bad input, not the usage block
        raise UserInputError(f"{message} (see python -m src.sweep --help)")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = _Parser(
        prog="python -m src.sweep", allow_abbrev=False,
        description="Run many `src.cli fit` trials as one Optuna study. Further --section.key value flags are "
                    "passed to every trial.")
    parser.add_argument("--config", action="append", required=True, help="experiment config(s), stacked as in src.cli")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--space", help="search space YAML: config keys mapped to distributions (configs/sweeps/)")
    mode.add_argument("--seeds", type=int, help="run the config with K seeds; report mean, std and 95%% CI")
    mode.add_argument("--folds", type=int, help="K-fold cross-validation on train (data.num_folds, data.fold)")
    parser.add_argument("--n_trials", type=int, help="finished trials the study should hold (with --space; default "
                                                     "for the grid sampler: the grid size)")
    parser.add_argument("--name", help="sweep name: logs/<experiment>/sweep_<name>/ and the study "
                                       "<experiment>/<name>; default: the space file's name, seedsK or foldsK")
    parser.add_argument("--storage", help="an Optuna RDB URL (postgresql://, mysql://, sqlite:///) for workers on "
                                          "several machines; default: a journal file in the sweep directory")
    parser.add_argument("--metric", help="the objective; default: the config's checkpoint.monitor (val/acc)")
    parser.add_argument("--direction", choices=("maximize", "minimize"), help="default: from checkpoint.mode")
    parser.add_argument("--dry_run", action="store_true",
                        help="check the config, space and flags, print a trial's command and stop (no storage, "
                             "nothing written)")
    args, extras = parser.parse_known_args(argv)
    if extras and not extras[0].startswith("--"):
        raise UserInputError(f"unexpected argument '{extras[0]}': config flags look like --section.key value")
    if args.n_trials is not None and args.n_trials < 1:
        raise UserInputError(f"--n_trials {args.n_trials}: pass at least 1")
    return args, extras


def flag_keys(extras: list[str]) -> set[str]:
    return {arg[2:].split("=", 1)[0].rstrip("+") for arg in extras if arg.startswith("--")}


def as_flags(values: dict[str, Any]) -> list[str]:
    """`--key value` pairs; values as JSON, which the CLI reads as YAML (strings quoted, so "1" stays a string)."""
    return [item for key, value in values.items() for item in (f"--{key}", json.dumps(value))]


# ----- the sweep ------------------------------------------------------------------------------------------------
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
        lines = [line for line in (err.getvalue() + "\n" + str(code)).splitlines() if line.strip()]
        message = next((line for line in lines if line.startswith("error:")), lines[0])
        raise UserInputError(f"the trial config does not parse: {message.removeprefix('error: ')}")
    return yaml.safe_load(out.getvalue())


def build_sweep(args: argparse.Namespace, config: dict[str, Any], extras: list[str]) -> Sweep:
    paths = config_paths(config)
    checkpoint = config.get("checkpoint") or {}
    monitor, mode = checkpoint.get("monitor"), checkpoint.get("mode", "max")
    metric = args.metric or monitor
    if not metric:
        raise UserInputError("the config has no checkpoint.monitor: pass --metric, e.g. --metric val/acc")
    if args.metric and args.metric != monitor and not args.direction:
        raise UserInputError(f"--metric {args.metric}: also pass --direction maximize or --direction minimize")
    configured = "minimize" if mode == "min" else "maximize"
    direction = args.direction or configured
    fixed: dict[str, Any] = {}
    if metric != monitor or direction != configured:  # the best checkpoint (and test after fit) follow the objective
        fixed.update({"checkpoint.monitor": metric, "checkpoint.mode": "max" if direction == "maximize" else "min"})
    if args.space:
        params, sampler, pruner = load_space(args.space)
        check_keys(list(params), config, "space key")
        name, queued, n_trials = args.name or Path(args.space).stem, [], args.n_trials
        if sampler["type"] == "grid":
            size = math.prod(len(values) for values in grid_values(params).values())
            if n_trials is not None and n_trials > size:
                raise UserInputError(f"--n_trials {n_trials} is more than the {size} points of the grid: pass "
                                     f"--n_trials {size} or leave it out")
            n_trials = n_trials or size
        elif n_trials is None:
            raise UserInputError("--n_trials is required with --space: how many trials the study should hold")
    else:
        what, n_trials = ("--seeds", args.seeds) if args.seeds is not None else ("--folds", args.folds)
        if args.n_trials is not None:
            raise UserInputError(f"--n_trials goes with --space; {what} {n_trials} runs {n_trials} trials")
        if n_trials < 2:
            raise UserInputError(f"{what} {n_trials}: pass at least 2 (a spread needs two runs)")
        if args.seeds is not None:
            base = config.get("seed_everything")
            base = base if isinstance(base, int) and not isinstance(base, bool) else 0
            key, values, name = "seed_everything", [base + i for i in range(n_trials)], f"seeds{n_trials}"
        else:
            if "data.num_folds" not in paths:
                raise UserInputError("--folds needs a data module with data.num_folds and data.fold (K-fold "
                                     "validation); this one has neither")
            key, values, name = "data.fold", list(range(n_trials)), f"folds{n_trials}"
            fixed["data.num_folds"] = n_trials
        params, queued = {key: CategoricalDistribution(values)}, [{key: value} for value in values]
        sampler, pruner, name = {"type": "random", "seed": 0}, {"type": "none"}, args.name or name
    swept = {paths.get(key, key) for key in [*params, *fixed]}
    clash = sorted(key for key in flag_keys(extras) if paths.get(key, key) in swept)
    if clash:
        raise UserInputError(f"--{clash[0]} is set on the command line, but the sweep sets it in every trial: "
                             "drop the flag")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserInputError(f"--name '{name}': use letters, digits, '_', '-' and '.'")
    sweep = Sweep(name, "space" if args.space else what.removeprefix("--"), params,
                  {key: paths.get(key, key) for key in [*params, *fixed]}, n_trials, metric, direction, sampler,
                  pruner, fixed, queued)
    make_sampler(sweep.sampler, sweep.params), make_pruner(sweep.pruner)  # bad settings fail now, not in a trial
    return sweep


def experiment_dirs(config: dict[str, Any]) -> tuple[str, Path]:
    """(experiment name, TensorBoard save_dir) from the config's logger."""
    logger = (config.get("trainer") or {}).get("logger")
    if not (isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("TensorBoardLogger")):
        raise UserInputError("a sweep writes one TensorBoard run per trial: the config's trainer.logger must be "
                             f"lightning.pytorch.loggers.TensorBoardLogger (got {logger!r})")
    init = logger.get("init_args") or {}
    return str(init.get("name") or "default"), Path(init.get("save_dir") or "logs")


def definition(sweep: Sweep, config: dict[str, Any]) -> dict[str, Any]:
    """What makes two sweeps one (JSON, stored with the study): a worker with another space or config is refused."""
    swept = set(sweep.paths.values())
    comparable = {key: value for key, value in leaves(config).items()
                  if not key.startswith(PLACEMENT_KEYS) and key not in swept}
    return {"mode": sweep.mode, "space": {k: optuna.distributions.distribution_to_json(d)
                                          for k, d in sweep.params.items()},
            "sampler": sweep.sampler, "pruner": sweep.pruner, "metric": sweep.metric, "direction": sweep.direction,
            "fixed": sweep.fixed, "config": json.loads(json.dumps(comparable, default=str))}


def open_study(sweep: Sweep, storage: optuna.storages.BaseStorage, study_name: str, where: str,
               wanted: dict[str, Any]) -> optuna.Study:
    """Create the study, or join the one of that name after checking it is the same sweep."""
    kwargs = {"study_name": study_name, "storage": storage, "sampler": make_sampler(sweep.sampler, sweep.params),
              "pruner": make_pruner(sweep.pruner)}
    try:
        study = optuna.load_study(**kwargs)
    except KeyError:  # no such study yet
        try:
            study = optuna.create_study(direction=sweep.direction, **kwargs)
            for params in sweep.queued:  # one trial per seed / fold, run in this order
                study.enqueue_trial(params)
            study.set_user_attr(DEFINITION_ATTR, wanted)  # last: joining workers wait for it
            return study
        except DuplicatedStudyError:  # another worker created it a moment ago
            study = optuna.load_study(**kwargs)
    for _ in range(60):
        found = study.user_attrs.get(DEFINITION_ATTR)
        if found is not None:
            break
        time.sleep(0.5)  # its creator is still queueing trials
    else:
        raise UserInputError(f"study '{study_name}' in {where} was not made by src.sweep: pick another --name")
    for part in ("mode", "space", "sampler", "pruner", "metric", "direction", "fixed", "config"):
        if found.get(part) != wanted[part]:
            raise UserInputError(f"sweep '{sweep.name}' already exists in {where} with a different {part} "
                                 f"({_difference(found.get(part), wanted[part])}): pick another --name, or delete "
                                 "that study to start over")
    return study


def _difference(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        key = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        return f"{key}: {_short(old.get(key))} there, {_short(new.get(key))} here"
    return f"{_short(old)} there, {_short(new)} here"


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) < 80 else text[:77] + "..."


# ----- a worker -------------------------------------------------------------------------------------------------
class Worker:
    """Runs trials of one study, one process at a time, until the study holds `sweep.n_trials` finished trials."""

    def __init__(self, sweep: Sweep, study: optuna.Study, storage: optuna.storages.BaseStorage, storage_arg: str,
                 study_name: str, sweep_dir: Path, trial_args: list[str], config: dict[str, Any]) -> None:
        self.sweep, self.study, self.storage, self.storage_arg = sweep, study, storage, storage_arg
        self.study_name, self.sweep_dir, self.trial_args, self.config = study_name, sweep_dir, trial_args, config
        self.study_id = storage.get_study_id_from_name(study_name)
        self.current: int | None = None  # trial id of the running trial

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
            if interrupted is not None and interrupted.state == TrialState.FAIL:  # optimize recorded it
                retry(self.study, interrupted, MAX_RETRIES)  # run it again next time
            raise

    def quota_reached(self) -> bool:
        """Finished trials plus those other workers are running reach --n_trials (queued ones need a worker)."""
        trials = self.study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        taken = sum(counts(t, retried) for t in trials) + sum(t.state == TrialState.RUNNING for t in trials)
        return taken >= self.sweep.n_trials

    def surplus(self, number: int) -> bool:
        """Two workers asking for a trial at the same moment could overshoot --n_trials: the higher number yields.
        Every trial created after this one saw it, so counting the ones before it decides exactly."""
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
        again with the same parameters (Optuna's retry callback, which also keeps a grid point's id)."""
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
            retry(self.study, self.storage.get_trial(trial_id), MAX_RETRIES)
            print(f"trial {t.number} was left running ({reason}): marked FAIL and queued again", flush=True)

    def objective(self, trial: optuna.Trial) -> float:
        number, trial_id = trial.number, self.trial_id(trial.number)
        self.current = trial_id
        if self.surplus(number):
            self.storage.set_trial_system_attr(trial_id, SURPLUS_ATTR, True)
            raise SurplusTrial("the study's remaining trials are taken by other workers")
        self.storage.set_trial_system_attr(trial_id, WORKER_ATTR, {"host": HOST, "pid": os.getpid()})
        self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        if retry_history(self.storage.get_trial(trial_id)):
            for key in RESULT_ATTRS:  # the retry callback copied them from the failed attempt
                trial.set_user_attr(key, None)
            self.storage.set_trial_system_attr(trial_id, PRUNED_KEY, False)
        params = {key: suggest(trial, key, dist) for key, dist in self.sweep.params.items()}
        run_dir = self.sweep_dir / f"trial_{number}"
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "trial.log"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("log", str(log))
        started = time.time()
        command = trial_command(self.trial_args, self.sweep, params, run_dir, self.study_name, trial_id, started)
        print(f"trial {number} started: {params_text(params)} → {run_dir}", flush=True)
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
        error = error_line(log, code) if code != 0 else None
        if error is None and value is None:
            error = f"the trial never logged {self.sweep.metric}: check --metric and that validation runs"
        if error is not None:
            trial.set_user_attr("error", error)
            print(f"trial {number} FAIL: {error} (log: {log})", flush=True)
            raise TrialFailed(error)
        print(f"trial {number} COMPLETE: {self.sweep.metric} {value:.4f} in {time.time() - started:.0f} s", flush=True)
        return value

    def run_process(self, command: list[str], log: Path, trial_id: int) -> int:
        env = {**os.environ, STORAGE_ENV: self.storage_arg, "PYTHONUNBUFFERED": "1"}
        with open(log, "w") as out:
            out.write(shlex.join(command[1:]) + "\n\n")
            out.flush()
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       preexec_fn=die_with_parent if _LIBC is not None else None)
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


def trial_command(trial_args: list[str], sweep: Sweep, params: dict[str, Any], run_dir: Path, study_name: str,
                  trial_id: int, launched_at: float) -> list[str]:
    """`python -m src.cli fit CONFIGS FLAGS` plus the sweep's settings, this trial's values, its run directory and
    the callback that reports to the study (appended to the defaults' callbacks)."""
    return [sys.executable, "-m", "src.cli", *trial_args, *as_flags(sweep.fixed), *as_flags(params),
            "--trainer.logger.init_args.save_dir", str(run_dir.parent.parent),
            "--trainer.logger.init_args.name", run_dir.parent.name,
            "--trainer.logger.init_args.version", run_dir.name,
            "--trainer.callbacks+=src.callbacks.optuna_pruning.OptunaPruning",
            f"--trainer.callbacks.init_args.study_name={study_name}",
            f"--trainer.callbacks.init_args.trial_id={trial_id}",
            f"--trainer.callbacks.init_args.monitor={sweep.metric}",
            f"--trainer.callbacks.init_args.launched_at={launched_at:.3f}"]


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the trial process before it starts (Linux): SIGKILL when the sweep process dies, so a killed sweep
    leaves no trial running on its own."""
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
        name = signal.Signals(-code).name if -code in {s.value for s in signal.Signals} else str(-code)
        return f"killed by {name}" + (f" after: {found}" if found else "")
    return found or f"exited with code {code}"


# ----- main -----------------------------------------------------------------------------------------------------
def sweep_main(argv: list[str] | None = None) -> int:
    args, extras = parse_args(argv)
    config_args = [item for path in args.config for item in ("--config", path)]
    if args.space:
        load_space(args.space)  # a bad space file fails before the config is resolved
    config = resolve_config(config_args, extras)
    sweep = build_sweep(args, config, extras)
    experiment, save_dir = experiment_dirs(config)
    sweep_dir = save_dir / experiment / f"sweep_{sweep.name}"
    storage_arg = args.storage or str((sweep_dir / "journal.log").absolute())
    where, study_name = hide_password(storage_arg), f"{experiment}/{sweep.name}"
    trial_args = ["fit", *config_args, *extras]
    if args.dry_run:
        example = sweep.queued[0] if sweep.queued else {key: f"<{key}>" for key in sweep.params}
        command = trial_command(trial_args, sweep, example, sweep_dir / "trial_N", study_name, 0, 0.0)
        print(f"Sweep {study_name}: {sweep.n_trials} trials in {sweep_dir}, objective {sweep.metric} "
              f"({sweep.direction}), study in {where}\nA trial runs: {shlex.join(['python', *command[1:]])}")
        return 0
    storage = open_storage(storage_arg)
    study = open_study(sweep, storage, study_name, where, definition(sweep, config))
    print(f"Sweep {study_name}: {sweep.n_trials} trials, objective {sweep.metric} ({sweep.direction}), "
          f"study in {where}", flush=True)
    worker = Worker(sweep, study, storage, storage_arg, study_name, sweep_dir, trial_args, config)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # scancel, kill: the running trial is queued again
    try:
        worker.run()
    except KeyboardInterrupt:
        write_reports(study, sweep, sweep_dir, config)
        print("Interrupted: rerun the same command to continue the sweep", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return finish(study, sweep, sweep_dir, config)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def finish(study: optuna.Study, sweep: Sweep, sweep_dir: Path, config: dict[str, Any]) -> int:
    report = write_reports(study, sweep, sweep_dir, config)
    rows, best = [row for row in report["rows"] if row["state"] not in (RETRIED, "WAITING")], report["best"]
    states = ", ".join(f"{sum(row['state'] == state for row in rows)} {state}"
                       for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING") if any(r["state"] == state for r in rows))
    print(f"\nSweep {sweep.name}: {len(rows)} trials ({states}) in {sweep_dir}")
    for row in report["summary"]:
        print(f"  {row['metric']}: {row['mean']:.4f} ± {row['std']:.4f} (std; 95% CI [{row['ci95_low']:.4f}, "
              f"{row['ci95_high']:.4f}], n={row['n']})")
    if best is not None:
        print(f"Best: trial {best.number}, {sweep.metric} {best.value:.4f} ({params_text(best.params)})\n"
              f"Rerun it: python -m src.cli fit --config {sweep_dir / 'best.yaml'}")
    print(f"Results: {sweep_dir / 'results.md'}\nView: tensorboard --logdir {sweep_dir}")
    ended = [row for row in rows if row["state"] in ("COMPLETE", "PRUNED", "FAIL")]
    if ended and all(row["state"] == "FAIL" for row in ended):
        first = min(ended, key=lambda row: row["trial"])
        raise SweepFailed(f"every trial failed; the first (trial {first['trial']}): {first['error']} "
                             f"(log: {first['log']})")
    return 0


def main(argv: list[str] | None = None) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this module prints one line per trial itself
    try:
        code = sweep_main(argv)
    except (UserInputError, SweepFailed) as err:
        sys.exit(f"error: {err}")
    sys.exit(code)


if __name__ == "__main__":
    main()
