"""`python -m src.sweep` end to end on the tiny fixtures: real Optuna studies (journal file, PostgreSQL), real trial
processes. Each trial is a few optimizer steps; most of a trial's time is the process start."""

import csv
import inspect
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from src.data import TextClassificationDataModule
from src.sweep import main as sweep_main
from tests.cli_helpers import REPO, run_cli, scalars, tiny_run_args

POSTGRES_URL = os.environ.get("SWEEP_TEST_POSTGRES_URL")
PRUNE_FAIL_SPACE = """
# grid order: trials 0, 1, 2 = max_epochs -5 (fails: Lightning rejects it), 1 (completes), 3 (pruned)
trainer.max_epochs: {type: categorical, choices: [1, 3, -5]}
sampler: grid
# val/acc can never reach 1.1: every trial that validates twice (epoch 1, after the warm-up epoch 0) is pruned
pruner: {type: threshold, lower: 1.1, n_warmup_steps: 1}
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tokenized cache for every sweep here, as trials of one sweep share one."""
    return tmp_path_factory.mktemp("tokenized")


@pytest.fixture
def trial_args(tiny_bert: Path, tiny_yelp: Path, cache_dir: Path) -> list[str]:
    return tiny_run_args(tiny_bert, tiny_yelp, "--data.train_size", "32", "--data.eval_size", "16",
                         "--data.batch_size", "8", "--data.cache_dir", str(cache_dir))


def sweep_env(cwd: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(cwd / "hf_datasets_cache"), "PYTHONUNBUFFERED": "1"}


def run_sweep(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "src.sweep", *args], cwd=cwd, env=sweep_env(cwd),
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"sweep {args} exited {result.returncode}:\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def start_sweep(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "src.sweep", *args], cwd=cwd, env=sweep_env(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_results(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "results.csv") as file:
        return list(csv.DictReader(file))


def journal_study(sweep_dir: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "journal.log")))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def hparams(run_dir: Path) -> dict[str, object]:
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = HParamsPluginData.FromString(content).session_start_info
    return {key: value.number_value or value.string_value for key, value in start.hparams.items()}


def in_process(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """A sweep run in this process (its trials are still processes of their own): one interpreter start less."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the trial processes import this checkout
    with pytest.raises(SystemExit) as exit_info:
        sweep_main(args)
    return exit_info.value.code


@pytest.mark.slow
def test_space_sweep_records_complete_pruned_and_failed_trials_and_best_yaml_reruns(
        tmp_path: Path, trial_args: list[str], capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "space.yaml").write_text(PRUNE_FAIL_SPACE)
    assert in_process([*trial_args, "--space", "space.yaml", "--test_after_fit", "true"], tmp_path, monkeypatch) == 0
    assert "Rerun it: python -m src.cli fit --config" in capsys.readouterr().out
    sweep_dir = tmp_path / "logs/yelp_bert/sweep_space"
    rows = {row["trainer.max_epochs"]: row for row in read_results(sweep_dir)}
    assert {key: row["state"] for key, row in rows.items()} == {"-5": "FAIL", "1": "COMPLETE", "3": "PRUNED"}

    failed = rows["-5"]  # the sweep went on after it, and says where its log is
    assert "max_epochs" in failed["error"] and "max_epochs" in (tmp_path / failed["log"]).read_text()

    pruned = journal_study(sweep_dir).trials[int(rows["3"]["trial"])]
    assert pruned.state == TrialState.PRUNED and sorted(pruned.intermediate_values) == [0, 1]  # stopped at epoch 1
    assert len(scalars(tmp_path / rows["3"]["run_dir"])["val/acc"]) == 2  # of 3 epochs

    complete = rows["1"]
    run_dir = tmp_path / complete["run_dir"]
    assert run_dir == sweep_dir / f"trial_{complete['trial']}"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints/last.ckpt").is_file()
    assert float(complete["test/acc"]) >= 0 and float(complete["startup_s"]) > 0
    assert hparams(run_dir)["max_epochs"] == 1  # the HPARAMS tab tells the trials apart
    markdown = (sweep_dir / "results.md").read_text()
    assert f"Best: trial {complete['trial']}" in markdown and "| PRUNED |" in markdown

    # best.yaml is a complete config: a plain run of it (logs/yelp_bert/version_0) retraces the best trial
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["trainer"]["max_epochs"] == 1
    assert not [c for c in best["trainer"]["callbacks"] if "OptunaPruning" in c["class_path"]]
    run_cli(["fit", "--config", str(sweep_dir / "best.yaml")], cwd=tmp_path)
    assert scalars(tmp_path / "logs/yelp_bert/version_0")["val/acc"] == pytest.approx([float(complete["val/acc"])])

    # the name is taken: another space under it is refused, and nothing changes
    before = {path: path.read_bytes() for path in sweep_dir.rglob("*") if path.is_file()}
    (tmp_path / "other.yaml").write_text("trainer.max_epochs: {type: categorical, choices: [1, 2]}\nsampler: grid\n")
    message = sweep_error([*trial_args, "--space", "other.yaml", "--name", "space"], capsys)
    assert f"sweep 'space' already exists in {sweep_dir.absolute()}/journal.log with a different space" in message
    assert {path: path.read_bytes() for path in sweep_dir.rglob("*") if path.is_file()} == before


def two_workers(args: list[str], cwd: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Two workers started at once: one in a process of its own, one in this process (one interpreter start less)."""
    other = start_sweep(args, cwd)
    code = in_process(args, cwd, monkeypatch)
    output = other.communicate(timeout=600)[0]
    assert (code, other.returncode) == (0, 0), output
    return [capsys.readouterr().out, output]


@pytest.mark.slow
def test_seeds_with_two_workers_on_one_journal(tmp_path: Path, trial_args: list[str], capsys,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers started at once share the queued seeds; each seed runs exactly once."""
    args = [*trial_args, "--trainer.max_epochs", "1", "--test_after_fit", "true", "--seeds", "3"]
    outputs = two_workers(args, tmp_path, capsys, monkeypatch)
    sweep_dir = tmp_path / "logs/yelp_bert/sweep_seeds3"
    study = journal_study(sweep_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert sorted(t.params["seed_everything"] for t in study.trials) == [42, 43, 44]
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    assert sorted(path.name for path in sweep_dir.glob("trial_*")) == ["trial_0", "trial_1", "trial_2"]

    with open(sweep_dir / "summary.csv") as file:
        summary = {row["metric"]: row for row in csv.DictReader(file)}
    values = [t.user_attrs["best_value"] for t in study.trials]
    from scipy import stats

    mean, half = sum(values) / 3, stats.t.ppf(0.975, 2) * stats.tstd(values) / 3**0.5
    assert float(summary["val/acc (best)"]["mean"]) == pytest.approx(mean)
    assert float(summary["val/acc (best)"]["ci95_high"]) == pytest.approx(mean + half)
    assert "test/acc" in summary
    assert "95% CI" in (sweep_dir / "results.md").read_text()
    assert any("val/acc (best):" in output for output in outputs)  # the summary, printed by the last worker
    assert (sweep_dir / "optimization_history.png").stat().st_size > 0


@pytest.mark.slow
def test_resume_after_the_sweep_is_killed_mid_trial(tmp_path: Path, trial_args: list[str], capsys,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "space.yaml").write_text("model.warmup_ratio: {type: categorical, choices: [0.1]}\nsampler: grid\n")
    args = [*trial_args, "--trainer.max_epochs", "1", "--space", "space.yaml"]
    sweep_dir = tmp_path / "logs/yelp_bert/sweep_space"
    process = start_sweep(args, tmp_path)
    trial_log = sweep_dir / "trial_0/trial.log"
    deadline = time.time() + 300
    while not (trial_log.is_file() and trial_log.stat().st_size > 0) and time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.2)
    time.sleep(1)  # the trial process is starting
    assert trial_processes(tmp_path)
    process.send_signal(signal.SIGKILL)  # no cleanup at all: trial 0 stays RUNNING in the journal
    process.wait()
    time.sleep(1)
    assert not trial_processes(tmp_path), "the trial process outlived its sweep"

    assert in_process(args, tmp_path, monkeypatch) == 0
    assert "trial 0 was left running (its worker process" in capsys.readouterr().out
    trials = journal_study(sweep_dir).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "its worker stopped" in trials[0].user_attrs["error"]
    assert trials[1].params == trials[0].params == {"model.warmup_ratio": 0.1}  # run again under a new number
    assert [row["state"] for row in read_results(sweep_dir)] == ["FAIL (retried)", "COMPLETE"]
    assert (sweep_dir / "trial_1/checkpoints/last.ckpt").is_file()


def trial_processes(cwd: Path) -> list[str]:
    """Live `src.cli` processes working in `cwd`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            alive = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            if alive and os.readlink(f"/proc/{pid}/cwd") == str(cwd) and \
                    b"src.cli" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.skipif("num_folds" not in inspect.signature(TextClassificationDataModule).parameters,
                    reason="the data module has no data.num_folds / data.fold yet")
@pytest.mark.slow
def test_folds_cross_validate(tmp_path: Path, trial_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert in_process([*trial_args, "--trainer.max_epochs", "1", "--folds", "3"], tmp_path, monkeypatch) == 0
    sweep_dir = tmp_path / "logs/yelp_bert/sweep_folds3"
    rows = read_results(sweep_dir)
    assert sorted(row["data.fold"] for row in rows) == ["0", "1", "2"]
    assert all(row["state"] == "COMPLETE" for row in rows)
    for row in rows:
        config = yaml.safe_load((tmp_path / row["run_dir"] / "config.yaml").read_text())
        assert config["data"]["num_folds"] == 3 and config["data"]["fold"] == int(row["data.fold"])
    with open(sweep_dir / "summary.csv") as file:
        assert next(csv.DictReader(file))["n"] == "3"


@pytest.mark.skipif(not POSTGRES_URL, reason="SWEEP_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL "
                                             "server and sets it)")
@pytest.mark.slow
def test_two_workers_on_postgresql(tmp_path: Path, trial_args: list[str], capsys,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "space.yaml").write_text("model.optimizer.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n"
                                         "sampler: random\n")
    name = f"w{uuid.uuid4().hex[:8]}"  # the database outlives the test
    args = [*trial_args, "--trainer.max_epochs", "1", "--space", "space.yaml", "--n_trials", "2", "--name", name,
            "--storage", POSTGRES_URL]
    outputs = two_workers(args, tmp_path, capsys, monkeypatch)
    assert sum(output.count(" started: ") for output in outputs) == 2, outputs

    study = optuna.load_study(study_name=f"yelp_bert/{name}", storage=POSTGRES_URL)
    ran = [t for t in study.trials if not t.system_attrs.get("sweep:surplus")]
    assert [t.state for t in ran] == [TrialState.COMPLETE] * 2
    assert len({t.number for t in ran}) == 2
    assert all(t.user_attrs["run_dir"].endswith(f"/trial_{t.number}") for t in ran)
    sweep_dir = tmp_path / f"logs/yelp_bert/sweep_{name}"
    assert (sweep_dir / "optimization_history.png").stat().st_size > 0
    assert (sweep_dir / "param_importances.png").stat().st_size > 0


# ----- bad input: one line, before any trial, nothing written ---------------------------------------------------
def sweep_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        sweep_main(args)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in capsys.readouterr().err
    return message


@pytest.mark.parametrize(("space", "expected"), [
    ("model.lrr: {type: float, low: 1.0e-5, high: 1.0e-3}", "'model.lrr' is not a config key (closest: "
     "model.optimizer.lr"),
    ("lr: {type: float, low: 1.0e-5, high: 1.0e-3}", "'lr' is not a config key (closest: model.optimizer.lr"),
    ("model.optimizer.lr: {type: float, low: 1.0e-5}", "space key model.optimizer.lr: type float needs low and high"),
    ("model.optimizer.lr: {type: floaat, low: 1, high: 2}", "expected a distribution with type float, int or "),
    ("model.optimizer.lr: {type: float, low: 0.0, high: 1.0, log: true}", "space key model.optimizer.lr:"),
    ("data.batch_size: {type: categorical, choices: []}", "choices must be a non-empty list"),
    ("model.optimizer.lr: {type: float, low: 1.0e-5, high: 1.0e-3, lo: 1}", "unknown field 'lo'"),
    ("model.optimizer.lr: {type: float, low: 1.0e-5, high: 1.0e-3}\npruner: medain", "pruner type 'medain' is not"),
])
def test_bad_space_files(space: str, expected: str, tmp_path: Path, trial_args: list[str], capsys,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(space)
    assert expected in sweep_error([*trial_args, "--space", "space.yaml", "--n_trials", "2"], capsys)
    assert not (tmp_path / "logs").exists()


def test_bad_arguments(tmp_path: Path, trial_args: list[str], capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text("model.optimizer.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n")
    space = [*trial_args, "--space", "space.yaml"]
    assert "--n_trials 0: pass at least 1" in sweep_error([*space, "--n_trials", "0"], capsys)
    assert "--n_trials is required" in sweep_error(space, capsys)
    clash = [*space, "--n_trials", "2", "--model.optimizer.init_args.lr", "1"]  # the long form of the same key
    assert "--model.optimizer.init_args.lr is set on the command line" in sweep_error(clash, capsys)
    assert "also pass --direction" in sweep_error([*space, "--n_trials", "2", "--metric", "val/loss"], capsys)
    assert "--seeds 1: pass at least 2" in sweep_error([*trial_args, "--seeds", "1"], capsys)
    message = sweep_error([*space, "--n_trials", "2", "--storage", "postgresql://me:secret@127.0.0.1:9/db"], capsys)
    assert "cannot open storage postgresql://me:***@127.0.0.1:9/db" in message and "secret" not in message
    assert "the trial config does not parse" in sweep_error([*space, "--n_trials", "2", "--data.batch_szie", "8"],
                                                            capsys)
    assert not (tmp_path / "logs").exists()


def test_a_sweep_whose_every_trial_fails_exits_non_zero_with_the_first_error(
        tmp_path: Path, trial_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "space.yaml").write_text("trainer.max_epochs: {type: categorical, choices: [-5]}\nsampler: grid\n")
    code = in_process([*trial_args, "--space", "space.yaml"], tmp_path, monkeypatch)
    assert code.startswith("error: every trial failed; the first (trial 0): ") and "\n" not in code
    assert "max_epochs" in code and "trial_0/trial.log" in code


def documented_sweep_commands() -> list[str]:
    """`python -m src.sweep` commands of the README (and of its sweeps section while that is a file of its own)."""
    commands = []
    for name in ("README.md", "SWEEPS_README_SECTION.md"):
        path = REPO / name
        text = path.read_text().replace("\\\n", " ") if path.is_file() else ""
        commands += [line.strip() for line in text.splitlines() if line.strip().startswith("python -m src.sweep ")]
    return commands


def test_the_documented_commands_run(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each documented sweep command passes every check a sweep makes before its first trial (--dry_run)."""
    commands = documented_sweep_commands()
    assert any("--storage postgresql://" in command for command in commands)
    monkeypatch.chdir(REPO)
    folds = "num_folds" in inspect.signature(TextClassificationDataModule).parameters
    for command in commands:
        if "--folds" in command and not folds:
            continue  # needs the data module's K-fold split
        with pytest.raises(SystemExit) as exit_info:
            sweep_main([*shlex.split(command)[3:], "--dry_run"])
        assert exit_info.value.code == 0, (command, capsys.readouterr())
        assert "A trial runs: python -m src.cli fit" in capsys.readouterr().out


# ----- the pieces a race or a crash exercises ------------------------------------------------------------------
def test_a_trial_asked_for_when_the_study_is_full_yields_to_the_earlier_ones() -> None:
    """Two workers that each ask for the study's last trial at the same moment: the higher number runs nothing."""
    from optuna.distributions import CategoricalDistribution

    from src.sweep import Worker
    from src.utils.optuna_study import retry
    from src.utils.sweep_space import Sweep

    study = optuna.create_study(study_name="s")
    study.add_trial(optuna.trial.create_trial(value=0.5))  # 0: finished
    retried = study.ask()  # 1: its worker died; queued again as 2
    study.tell(retried, state=TrialState.FAIL)
    retry(study, study.trials[1], max_retries=2)
    first, second = study.ask(), study.ask()  # 2 (the queued retry) and 3, asked by two workers at once
    sweep = Sweep("s", "space", {"x": CategoricalDistribution([1])}, {"x": "x"}, 2, "val/acc", "maximize")
    worker = Worker(sweep, study, study._storage, "", "s", Path("."), [], {})
    assert (first.number, second.number) == (2, 3)
    assert not worker.surplus(2) and worker.surplus(3)  # the retried trial 1 does not count, the queued 2 does
    assert worker.quota_reached()


def test_the_pruned_marker_is_the_integrations() -> None:
    """The sweep reads a pruned trial off the marker optuna-integration's callback sets under DDP."""
    from optuna_integration.pytorch_lightning import pytorch_lightning

    from src.utils.optuna_study import PRUNED_KEY

    assert PRUNED_KEY == pytorch_lightning._PRUNED_KEY


def test_stale_trials_by_heartbeat_and_by_process() -> None:
    from src.sweep import HOST, STALE_AFTER_S, stale_reason

    def running(worker: dict, heartbeat: float) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs={
            "sweep:worker": worker, "sweep:heartbeat": heartbeat})

    now = time.time()
    assert stale_reason(running({"host": "elsewhere", "pid": 1}, now - 10)) is None
    silent = running({"host": "elsewhere", "pid": 1}, now - STALE_AFTER_S - 1)
    assert "no heartbeat from elsewhere" in stale_reason(silent)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    assert f"process {dead.pid} on {HOST} is gone" in stale_reason(running({"host": HOST, "pid": dead.pid}, now))
    assert stale_reason(running({"host": HOST, "pid": os.getpid()}, now)) is None


def test_the_error_line_of_a_trial_log(tmp_path: Path) -> None:
    from src.sweep import error_line

    log = tmp_path / "trial.log"
    log.write_text("python -m src.cli fit ...\n\nTraceback (most recent call last):\n  File ...\n"
                   "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    assert error_line(log, 1) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    log.write_text("Epoch 0: 12%\n")
    assert error_line(log, -9) == "killed by SIGKILL"
    log.write_text("error: data.batch_size=0 must be a positive integer\n")
    assert error_line(log, 1) == "error: data.batch_size=0 must be a positive integer"
