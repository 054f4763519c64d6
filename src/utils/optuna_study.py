"""What a sweep (`src/sweep.py`) and its trial processes (`src/callbacks/optuna_pruning.py`) share: opening an
Optuna storage from one string, building the pruner from the study's stored definition, the trial attributes.

A storage string is an RDB URL (`postgresql://user:pw@host/db`, `mysql+pymysql://...`, `sqlite:///sweep.db`) or the
path of an Optuna journal file (embedded, no server; the processes of one machine share it).
"""

import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from src.utils.errors import UserInputError

DEFINITION_ATTR = "sweep"  # study user attr: what the sweep runs (space, mode, metric, config); set when created
WORKER_ATTR, HEARTBEAT_ATTR = "sweep:worker", "sweep:heartbeat"  # trial system attrs: who runs it, when last seen
PRUNED_KEY = "ddp_pl:pruned"  # optuna-integration's marker of a pruned Lightning trial (its private _PRUNED_KEY)
SURPLUS_ATTR = "sweep:surplus"  # a trial a worker asked for when the study was already full: it never ran
STORAGE_ENV = "SWEEP_STORAGE"  # how a trial process gets the storage string: an env var keeps passwords off argv
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "none": optuna.pruners.NopPruner,
}


def is_rdb_url(storage: str) -> bool:
    return "://" in storage


def hide_password(storage: str) -> str:
    if not is_rdb_url(storage):
        return storage
    from sqlalchemy.engine import make_url

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # a malformed URL: show only its scheme
        return storage.split("://")[0] + "://..."


def open_storage(storage: str) -> BaseStorage:
    """An RDB storage for a URL (tables created on first use), else a journal file storage at that path."""
    if not is_rdb_url(storage):
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(storage))
    try:
        return _rdb_storage(storage)
    except ImportError as err:  # optuna's, caused by the driver's ModuleNotFoundError
        driver = getattr(err.__cause__, "name", None) or getattr(err, "name", None) or "for this database"
        raise UserInputError(f"storage {hide_password(storage)} needs the database driver {driver}: "
                             "pip install -e '.[sweep]' (PostgreSQL), or install your database's driver") from None
    except Exception as err:  # sqlalchemy: OperationalError (unreachable, bad login), ArgumentError (bad URL)
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise UserInputError(f"cannot open storage {hide_password(storage)}: {reason}. Check that the database "
                             "server runs and the URL (user, password, host, port, database) is right") from None


def _rdb_storage(url: str, attempts: int = 5) -> RDBStorage:
    """Workers started together on a fresh database race to create Optuna's tables: the losers' CREATE or version
    INSERT fails; once the winner is done the tables are there, so they try again."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def make_pruner(spec: str | dict[str, Any] | None) -> BasePruner:
    """`median` (default), `hyperband`, `none`, ... or `{type: median, n_startup_trials: 2, ...}`."""
    spec = {"type": spec} if isinstance(spec, str) or spec is None else dict(spec)
    kind = spec.pop("type", None) or "median"
    if kind not in PRUNERS:
        raise UserInputError(f"pruner type '{kind}' is not one of {', '.join(PRUNERS)}")
    try:
        return PRUNERS[kind](**spec)
    except (TypeError, ValueError) as err:
        raise UserInputError(f"pruner {kind}: {err}") from None


def load_trial(storage: str, study_name: str, trial_id: int) -> optuna.trial.Trial:
    """The running trial `trial_id`, seen from another process, with the pruner the study was created with."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage),
                              sampler=optuna.samplers.RandomSampler())  # a trial process never samples
    study.pruner = make_pruner(study.user_attrs.get(DEFINITION_ATTR, {}).get("pruner"))
    return optuna.trial.Trial(study, trial_id)


def retry(study: optuna.Study, trial: FrozenTrial, max_retries: int) -> None:
    """Queue a failed trial again with its parameters (and grid point), as Optuna's retry callback does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retries)(study, trial)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The trials `trial` runs again, as Optuna's retry callback records them (empty for a first attempt)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the trials that were queued again."""
    return {number for t in trials for number in retry_history(t)}


def counts(trial: FrozenTrial, retried: set[int]) -> bool:
    """Whether a finished trial counts toward --n_trials: not one that was retried or never ran."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.number not in retried and not trial.system_attrs.get(SURPLUS_ATTR)
