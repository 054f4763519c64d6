"""Fault suite: the fit -> test -> predict workflow through the real CLI, with the mistakes and accidents of real use.

Each test names what a researcher would do or suffer; the contract is always the same: the right result or a
one-line `error:`, and a finished run's config, checkpoints and curves byte-for-byte as they were.
(Kills mid-epoch, mid-save and mid-validation, followed by exact resumes, are in test_resume.py.)
"""

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.cli_helpers import REPO, run_cli, scalars, tiny_run_args


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file of a training run (not its eval/ runs) by content."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and "eval" not in p.relative_to(run_dir).parts}


def run_dir_in(stdout: str, workdir: Path) -> Path:
    return workdir / re.search(r"Run directory: (\S+)", stdout).group(1)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    return last


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def args(tiny_bert: Path, tiny_yelp: Path) -> list[str]:
    # the best checkpoint is the newest (monitor `step`): it changes in the last epoch, as in the quickstart
    return tiny_run_args(tiny_bert, tiny_yelp, "--checkpoint.monitor", "step", "--checkpoint.mode", "max")


@pytest.fixture(scope="module")
def finished_run(args: list[str], workdir: Path) -> Path:
    return run_dir_in(run_cli(["fit", *args, "--trainer.max_epochs", "2"], cwd=workdir).stdout, workdir)


def test_ckpt_path_best_right_after_fit_is_the_final_best(finished_run: Path, args: list[str], workdir: Path) -> None:
    (best,) = (finished_run / "checkpoints").glob("epoch*.ckpt")
    assert best.name.startswith("epoch1-step20")  # chosen at the end of the last epoch
    result = run_cli(["test", *args, "--ckpt_path", "best"], cwd=workdir)
    assert f"--ckpt_path best: {best.relative_to(workdir)}" in result.stdout


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
@pytest.mark.parametrize("which", ["best", "last"])
def test_eval_commands_leave_the_training_run_as_it_was(
    command: str, which: str, finished_run: Path, args: list[str], workdir: Path
) -> None:
    before = snapshot(finished_run)
    curves = scalars(finished_run)
    evals = set((finished_run / "eval").glob("*")) if (finished_run / "eval").exists() else set()
    run_cli([command, *args, "--ckpt_path", which], cwd=workdir)
    assert snapshot(finished_run) == before  # config.yaml, hparams, checkpoints, events: untouched
    assert scalars(finished_run) == curves  # the training curves TensorBoard shows for the run
    (new,) = set((finished_run / "eval").glob("*")) - evals  # one eval run of its own, beside them
    assert new.name.startswith(f"{command}_") and (new / "config.yaml").is_file()
    assert f"ckpt_path: {finished_run.relative_to(workdir)}/checkpoints/" in (new / "config.yaml").read_text()
    if command == "predict":
        assert (new / "predictions.jsonl").is_file()
    else:
        stage = "val" if command == "validate" else "test"
        assert f"{stage}/acc" in scalars(new)


def test_ckpt_path_last_refuses_a_newest_run_without_checkpoint(
    finished_run: Path, args: list[str], workdir: Path
) -> None:
    """Ctrl-C on a second fit before its first save leaves a run with a config and no checkpoint."""
    experiment = finished_run.parent
    interrupted = experiment / f"version_{int(finished_run.name.split('_')[1]) + 1}"
    interrupted.mkdir()
    (interrupted / "config.yaml").write_text((finished_run / "config.yaml").read_text())
    try:
        before = snapshot(finished_run)
        message = one_line_error(run_cli(["fit", *args, "--ckpt_path", "last"], cwd=workdir, check=False))
        assert f"the newest run {interrupted.relative_to(workdir)} has no checkpoint" in message
        assert f"--ckpt_path {(finished_run / 'checkpoints/last.ckpt').relative_to(workdir)}" in message  # the fix
        assert snapshot(finished_run) == before
    finally:
        for path in sorted(interrupted.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        interrupted.rmdir()


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_truncated_checkpoint_is_a_one_line_error(
    command: str, finished_run: Path, args: list[str], workdir: Path, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes((finished_run / "checkpoints" / "last.ckpt").read_bytes()[:1000])  # head -c 1000
    before = snapshot(finished_run)
    message = one_line_error(run_cli([command, *args, "--ckpt_path", str(damaged)], cwd=workdir, check=False))
    assert f"could not read checkpoint '{damaged}'" in message and "damaged" in message
    assert snapshot(finished_run) == before


def test_broken_config_file_is_a_short_error(args: list[str], workdir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_epochs: [1\n")
    result = run_cli(["fit", *args, "--config", str(broken)], cwd=workdir, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error:" in result.stderr and len(result.stderr.strip().splitlines()) <= 4, result.stderr


@pytest.mark.slow
def test_concurrent_fits_of_one_experiment_get_their_own_runs(args: list[str], tmp_path: Path) -> None:
    env_args = [*args, "--trainer.max_epochs", "1", "--trainer.logger.init_args.name", "together"]
    run_cli(["fit", *env_args, "--trainer.max_steps", "1"], cwd=tmp_path)  # tokenize once, as a sweep would
    procs = [subprocess.Popen([sys.executable, "-m", "src.cli", "fit", *env_args], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path)) for _ in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    runs = {run_dir_in(out, tmp_path) for out, _ in outputs}
    assert len(runs) == 2  # never the same run directory
    for run in runs:
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10


def _env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(workdir / "hf_datasets_cache")}


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mount small tmpfs filesystems (read-only or size-limited), as a full or read-only disk; skip where the
    platform does not let this process mount (not root, no mount namespace)."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.slow
def test_read_only_or_uncreatable_save_dir_fails_before_loading_the_model(
    args: list[str], tmp_path: Path, tmpfs: Callable[[str, str], Path]
) -> None:
    read_only = tmpfs("ro", "size=1m,ro")
    message = one_line_error(run_cli(["fit", *args, "--trainer.logger.init_args.save_dir", str(read_only / "logs")],
                                     cwd=tmp_path, check=False))
    assert "cannot be written" in message and "save_dir" in message
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_cli(["fit", *args, "--trainer.logger.init_args.save_dir", str(blocker / "logs")], cwd=tmp_path,
                     check=False)
    assert "is a file, not a directory" in one_line_error(result)
    assert "Loading weights" not in result.stderr + result.stdout  # refused before the model was loaded


def test_full_disk_mid_run_is_one_line_and_keeps_the_last_checkpoint(
    args: list[str], tmp_path: Path, tmpfs: Callable[[str, str], Path]
) -> None:
    small = tmpfs("small", "size=1000k")
    result = run_cli(["fit", *args, "--trainer.max_epochs", "6", "--periodic_checkpoint.every_n_train_steps", "2",
                      "--trainer.logger.init_args.save_dir", str(small / "logs")], cwd=tmp_path, check=False)
    message = one_line_error(result)
    assert "No space left on device" in message and "--ckpt_path last" in message
    (last,) = small.glob("logs/*/version_0/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] > 0  # whole and loadable
    assert not list(last.parent.glob(".*.tmp"))  # the failed save left nothing behind
