"""The CLI end to end, in subprocesses: fit writes a complete run dir; validate/test/predict reuse it."""

import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.cli_helpers import REPO, run_cli, scalar_points, scalars, tiny_run_args


@pytest.fixture(scope="module")
def fitted_run(tiny_bert: Path, tiny_yelp: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny `fit --test_after_fit true` through the CLI; returns its run directory."""
    workdir = tmp_path_factory.mktemp("cli_fit")
    result = run_cli(["fit", *tiny_run_args(tiny_bert, tiny_yelp, "--trainer.max_epochs", "2",
                                            "--test_after_fit", "true")], cwd=workdir)
    match = re.search(r"Run directory: (\S+)", result.stdout)
    assert match, result.stdout[-2000:]
    return workdir / match.group(1)


def test_fit_writes_config_checkpoints_and_events(fitted_run: Path) -> None:
    assert fitted_run.parent.name == "yelp_bert" and fitted_run.name.startswith("version_")
    config = (fitted_run / "config.yaml").read_text()
    assert "model_name_or_path" in config and "train_size: 80" in config
    checkpoints = fitted_run / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    best = [p for p in checkpoints.glob("epoch*.ckpt")]
    assert len(best) == 1 and "val_acc" in best[0].name
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 * 10  # 2 epochs of 80 rows in batches of 8
    assert last["hyper_parameters"]["num_labels"] == 5
    logged = scalars(fitted_run)
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/f1_macro", "test/acc", "test/loss"} <= set(logged)
    assert len(logged["val/acc"]) == 2  # once per epoch
    assert all(0.0 <= acc <= 1.0 for acc in logged["val/acc"])
    lr_points = next(points for tag, points in scalar_points(fitted_run).items() if tag.startswith("lr-"))
    assert len(lr_points) >= 5
    for step, lr in lr_points:  # linear decay from 5e-5 to 0 over 20 steps, no warmup (the tutorial's schedule)
        assert lr == pytest.approx(5e-5 * (1 - step / 20), rel=1e-4)


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_evaluate_from_checkpoint_writes_into_its_run(
    subcommand: str, fitted_run: Path, tiny_bert: Path, tiny_yelp: Path
) -> None:
    workdir = fitted_run.parents[2]
    ckpt = fitted_run / "checkpoints" / "last.ckpt"
    before = set(fitted_run.parent.iterdir())
    result = run_cli([subcommand, *tiny_run_args(tiny_bert, tiny_yelp), "--ckpt_path", str(ckpt)], cwd=workdir)
    stage = "val" if subcommand == "validate" else "test"
    assert f"{stage}/acc" in result.stdout
    assert set(fitted_run.parent.iterdir()) == before  # no new version dir: results land in the checkpoint's run
    assert (fitted_run / "checkpoints" / "last.ckpt").is_file()


def test_ckpt_path_last_finds_the_newest_run(fitted_run: Path, tiny_bert: Path, tiny_yelp: Path) -> None:
    result = run_cli(["test", *tiny_run_args(tiny_bert, tiny_yelp), "--ckpt_path", "last"], cwd=fitted_run.parents[2])
    run = fitted_run.relative_to(fitted_run.parents[2])
    assert f"--ckpt_path last: {run}/checkpoints/last.ckpt" in result.stdout


def test_ckpt_path_best_finds_the_best_checkpoint_of_the_newest_run(
    fitted_run: Path, tiny_bert: Path, tiny_yelp: Path
) -> None:
    result = run_cli(["validate", *tiny_run_args(tiny_bert, tiny_yelp), "--ckpt_path", "best"],
                     cwd=fitted_run.parents[2])
    (best,) = (fitted_run / "checkpoints").glob("epoch*.ckpt")
    assert f"--ckpt_path best: {best.relative_to(fitted_run.parents[2])}" in result.stdout


def test_missing_checkpoint_is_a_one_line_error(tmp_path: Path, tiny_bert: Path, tiny_yelp: Path) -> None:
    result = run_cli(["test", *tiny_run_args(tiny_bert, tiny_yelp), "--ckpt_path", "nope.ckpt"], cwd=tmp_path,
                     check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: checkpoint 'nope.ckpt' does not exist")
    assert "Traceback" not in result.stderr


def test_debug_preset_runs_one_batch_and_writes_no_run(tmp_path: Path, tiny_bert: Path, tiny_yelp: Path) -> None:
    # --test_after_fit as in the quickstart config: without checkpoints it tests the weights in memory
    result = run_cli(["fit", *tiny_run_args(tiny_bert, tiny_yelp), "--config", str(REPO / "configs/debug.yaml"),
                      "--test_after_fit", "true"], cwd=tmp_path)
    assert "Run directory" not in result.stdout and "test/acc" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_datasets_cache"]  # no logs/, no checkpoints/


def test_configs_dir_is_complete() -> None:
    names = {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert {"yelp_bert.yaml", "yelp_bert_full.yaml", "quickstart.yaml", "debug.yaml"} <= names
    assert {f"hardware/{n}.yaml" for n in ("cpu", "gpu", "ddp", "bf16", "fp16")} <= names


def test_optimizer_is_chosen_on_the_command_line(tmp_path: Path, tiny_bert: Path, tiny_yelp: Path) -> None:
    args = tiny_run_args(tiny_bert, tiny_yelp, "--trainer.max_steps", "3", "--model.optimizer", "torch.optim.SGD",
                         "--model.optimizer.lr", "0.1", "--model.optimizer.momentum", "0.9")
    run_dir = tmp_path / re.search(r"Run directory: (\S+)", run_cli(["fit", *args], cwd=tmp_path).stdout).group(1)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (groups,) = [s["param_groups"] for s in state["optimizer_states"]]
    assert all(g["momentum"] == 0.9 and "betas" not in g for g in groups)  # SGD's state, not AdamW's
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert "class_path: torch.optim.SGD" in (run_dir / "config.yaml").read_text()


def test_a_default_callback_is_removed_by_config(tmp_path: Path, tiny_bert: Path, tiny_yelp: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from src.callbacks.throughput_monitor import ThroughputMonitor
    from src.cli import ReviewClassifierCLI
    from src.data import TextClassificationDataModule
    from src.model import SequenceClassifier

    defaults = yaml.safe_load((REPO / "configs/defaults.yaml").read_text())["trainer"]["callbacks"]
    kept = [c for c in defaults if not c["class_path"].endswith("ThroughputMonitor")]
    config = tmp_path / "no_throughput.yaml"
    config.write_text(yaml.safe_dump({"trainer": {"callbacks": kept}}))
    monkeypatch.chdir(tmp_path)

    def callbacks(*extra: str) -> list[type]:
        cli = ReviewClassifierCLI(SequenceClassifier, TextClassificationDataModule, run=False,
                                  args=tiny_run_args(tiny_bert, tiny_yelp, *extra))
        return [type(c) for c in cli.trainer.callbacks]

    assert ThroughputMonitor in callbacks()
    assert ThroughputMonitor not in callbacks("--config", str(config))


@pytest.mark.slow
def test_any_logger_runs_fit_resume_and_test(tmp_path: Path, tiny_bert: Path, tiny_yelp: Path) -> None:
    csv = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", "logs",
           "--trainer.logger.init_args.name", "csv_run"]
    run_cli(["fit", *tiny_run_args(tiny_bert, tiny_yelp, *csv, "--trainer.max_epochs", "1")], cwd=tmp_path)
    run_dir = tmp_path / "logs" / "csv_run" / "version_0"
    assert (run_dir / "metrics.csv").is_file() and not list(run_dir.glob("events.out.tfevents.*"))
    resumed = run_cli(["fit", *tiny_run_args(tiny_bert, tiny_yelp, *csv, "--trainer.max_epochs", "2"),
                       "--ckpt_path", "last"], cwd=tmp_path)
    assert "--ckpt_path last: logs/csv_run/version_0/checkpoints/last.ckpt" in resumed.stdout
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 20 and sorted(p.name for p in run_dir.parent.iterdir()) == ["version_0"]
    tested = run_cli(["test", *tiny_run_args(tiny_bert, tiny_yelp, *csv), "--ckpt_path", "best"], cwd=tmp_path)
    assert "test/acc" in tested.stdout and list((run_dir / "eval").glob("test_*/metrics.csv"))
