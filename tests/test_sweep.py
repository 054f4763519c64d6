"""`python -m src.sweep` end to end on the tiny fixtures: real Optuna studies (journal file, PostgreSQL), real trial
processes. Each trial is a few optimizer steps; most of a trial's time is the process start."""

import csv
import inspect
import os
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


def test_space_sweep_records_complete_pruned_and_failed_trials_and_best_yaml_reruns(tmp_path: Path,
                                                                                     trial_args: list[str]) -> None:
    (tmp_path / "space.yaml").write_text(PRUNE_FAIL_SPACE)
    result = run_sweep([*trial_args, "--space", "space.yaml", "--test_after_fit", "true"], tmp_path)
    sweep_dir = tmp_path / "logs/yelp_bert/sweep_space"
    rows = {row["trainer.max_epochs"]: row for row in read_results(sweep_dir)}
    assert {key: row["state"] for key, row in rows.items()} == {"-5": "FAIL", "1": "COMPLETE", "3": "PRUNED"}

    failed = rows["-5"]  # the sweep went on after it, and says where its log is
    assert "max_epochs" in failed["error"] and Path(tmp_path / failed["log"]).is_file()
    assert "max_epochs" in (tmp_path / failed["log"]).read_text()

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
    assert "Rerun it: python -m src.cli fit --config" in result.stdout

    # best.yaml is a complete config: a plain run of it (logs/yelp_bert/version_0) retraces the best trial
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["trainer"]["max_epochs"] == 1 and best["trainer"]["callbacks"] is None
    run_cli(["fit", "--config", str(sweep_dir / "best.yaml")], cwd=tmp_path)
    assert scalars(tmp_path / "logs/yelp_bert/version_0")["val/acc"] == pytest.approx([float(complete["val/acc"])])


def test_seeds_summary_and_resume_after_the_sweep_is_killed_mid_trial(tmp_path: Path, trial_args: list[str]) -> None:
    args = [*trial_args, "--trainer.max_epochs", "1", "--test_after_fit", "true", "--seeds", "3"]
    sweep_dir = tmp_path / "logs/yelp_bert/sweep_seeds3"
    process = start_sweep(args, tmp_path)
    trial_log = sweep_dir / "trial_1/trial.log"
    deadline = time.time() + 300
    while not (trial_log.is_file() and trial_log.stat().st_size > 0) and time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.2)
    time.sleep(1)  # the trial process is starting
    assert trial_processes(tmp_path)
    process.send_signal(signal.SIGKILL)  # no cleanup at all: trial 1 stays RUNNING in the journal
    process.wait()
    time.sleep(1)
    assert not trial_processes(tmp_path), "the trial process outlived its sweep"

    result = run_sweep(args, tmp_path)
    assert "trial 1 was left running" in result.stdout
    study = journal_study(sweep_dir)
    states = {t.number: t.state for t in study.trials}
    assert states[1] == TrialState.FAIL and sum(s == TrialState.COMPLETE for s in states.values()) == 3
    seeds = sorted(t.params["seed_everything"] for t in study.trials if t.state == TrialState.COMPLETE)
    assert seeds == [42, 43, 44]  # the killed seed ran again, as a new trial number
    assert len({t.number for t in study.trials}) == len(study.trials) == 4

    with open(sweep_dir / "summary.csv") as file:
        summary = {row["metric"]: row for row in csv.DictReader(file)}
    values = [t.user_attrs["best_value"] for t in study.trials if t.state == TrialState.COMPLETE]
    from scipy import stats

    mean, half = sum(values) / 3, stats.t.ppf(0.975, 2) * stats.tstd(values) / 3**0.5
    assert float(summary["val/acc (best)"]["mean"]) == pytest.approx(mean)
    assert float(summary["val/acc (best)"]["ci95_high"]) == pytest.approx(mean + half)
    assert "test/acc" in summary  # the quick run tests after fit
    assert "95% CI" in (sweep_dir / "results.md").read_text() and "val/acc (best):" in result.stdout


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
def test_folds_cross_validate(tmp_path: Path, trial_args: list[str]) -> None:
    run_sweep([*trial_args, "--trainer.max_epochs", "1", "--folds", "3"], tmp_path)
    sweep_dir = tmp_path / "logs/yelp_bert/sweep_folds3"
    rows = read_results(sweep_dir)
    assert sorted(row["data.fold"] for row in rows) == ["0", "1", "2"]
    assert all(row["state"] == "COMPLETE" for row in rows)
    for row in rows:
        config = yaml.safe_load((tmp_path / row["run_dir"] / "config.yaml").read_text())
        assert config["data"]["num_folds"] == 3 and config["data"]["fold"] == int(row["data.fold"])
    assert (sweep_dir / "summary.csv").is_file()


@pytest.mark.parametrize("storage", ["journal", "postgresql"])
def test_two_workers_share_one_study(storage: str, tmp_path: Path, trial_args: list[str]) -> None:
    if storage == "postgresql" and not POSTGRES_URL:
        pytest.skip("SWEEP_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)")
    (tmp_path / "space.yaml").write_text("model.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n"
                                         "sampler: random\n")
    name = f"w{uuid.uuid4().hex[:8]}"  # a PostgreSQL database outlives the test
    args = [*trial_args, "--trainer.max_epochs", "1", "--space", "space.yaml", "--n_trials", "2", "--name", name]
    if storage == "postgresql":
        args += ["--storage", POSTGRES_URL]
    workers = [start_sweep(args, tmp_path) for _ in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs

    storage_obj = POSTGRES_URL if storage == "postgresql" else \
        JournalStorage(JournalFileBackend(str(tmp_path / f"logs/yelp_bert/sweep_{name}/journal.log")))
    study = optuna.load_study(study_name=f"yelp_bert/{name}", storage=storage_obj)
    ran = [t for t in study.trials if not t.system_attrs.get("sweep:surplus")]
    assert [t.state for t in ran] == [TrialState.COMPLETE] * 2
    assert len({t.number for t in ran}) == 2
    assert all(t.user_attrs["run_dir"].endswith(f"/trial_{t.number}") for t in ran)
    assert sum("started" in line for output in outputs for line in output.splitlines()) >= 2
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
    ("model.lrr: {type: float, low: 1.0e-5, high: 1.0e-3}", "'model.lrr' is not a config key (closest: model.lr"),
    ("lr: {type: float, low: 1.0e-5, high: 1.0e-3}", "'lr' is not a config key (closest: model.lr"),
    ("model.lr: {type: float, low: 1.0e-5}", "space key model.lr: type float needs low and high"),
    ("model.lr: {type: floaat, low: 1, high: 2}", "expected a distribution with type float, int or categorical"),
    ("model.lr: {type: float, low: 0.0, high: 1.0, log: true}", "space key model.lr:"),
    ("data.batch_size: {type: categorical, choices: []}", "choices must be a non-empty list"),
    ("model.lr: {type: float, low: 1.0e-5, high: 1.0e-3, lo: 1}", "unknown field 'lo'"),
    ("model.lr: {type: float, low: 1.0e-5, high: 1.0e-3}\npruner: medain", "pruner type 'medain' is not one of"),
])
def test_bad_space_files(space: str, expected: str, tmp_path: Path, trial_args: list[str], capsys,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(space)
    assert expected in sweep_error([*trial_args, "--space", "space.yaml", "--n_trials", "2"], capsys)
    assert not (tmp_path / "logs").exists()


def test_bad_arguments(tmp_path: Path, trial_args: list[str], capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text("model.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n")
    space = [*trial_args, "--space", "space.yaml"]
    assert "--n_trials 0: pass at least 1" in sweep_error([*space, "--n_trials", "0"], capsys)
    assert "--n_trials is required" in sweep_error(space, capsys)
    assert "--model.lr is set on the command line" in sweep_error([*space, "--n_trials", "2", "--model.lr", "1"],
                                                                  capsys)
    assert "also pass --direction" in sweep_error([*space, "--n_trials", "2", "--metric", "val/loss"], capsys)
    assert "--seeds 1: pass at least 2" in sweep_error([*trial_args, "--seeds", "1"], capsys)
    message = sweep_error([*space, "--n_trials", "2", "--storage", "postgresql://me:secret@127.0.0.1:9/db"], capsys)
    assert "cannot open storage postgresql://me:***@127.0.0.1:9/db" in message and "secret" not in message
    assert "the trial config does not parse" in sweep_error([*space, "--n_trials", "2", "--data.batch_szie", "8"],
                                                            capsys)
    assert not (tmp_path / "logs").exists()


def test_a_name_taken_by_another_space_is_refused(tmp_path: Path, trial_args: list[str], capsys,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The first sweep's only trial fails (so it is quick); reusing its name with another space changes nothing."""
    (tmp_path / "a.yaml").write_text("trainer.max_epochs: {type: categorical, choices: [-5]}\nsampler: grid\n")
    result = run_sweep([*trial_args, "--space", "a.yaml", "--name", "lr1"], tmp_path, check=False)
    assert result.returncode == 1  # every trial failed: non-zero, with the first error
    assert result.stderr.strip().splitlines()[-1].startswith("error: every trial failed; the first (trial 0): ")
    assert "max_epochs" in result.stderr and "trial_0/trial.log" in result.stderr

    sweep_dir = tmp_path / "logs/yelp_bert/sweep_lr1"
    before = {path: path.read_bytes() for path in sweep_dir.rglob("*") if path.is_file()}
    (tmp_path / "b.yaml").write_text("trainer.max_epochs: {type: categorical, choices: [1, 2]}\nsampler: grid\n")
    monkeypatch.chdir(tmp_path)
    message = sweep_error([*trial_args, "--space", "b.yaml", "--name", "lr1"], capsys)
    assert "sweep 'lr1' already exists in" in message and "with a different space" in message
    assert {path: path.read_bytes() for path in sweep_dir.rglob("*") if path.is_file()} == before
