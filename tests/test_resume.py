"""Crash and resume: a killed run, resumed, ends exactly where the same run left alone ends.

Runs go through the CLI in subprocesses (CPU, the tiny BERT with dropout on, 2 epochs of 10 steps, last.ckpt every
3 steps). A run is killed with SIGKILL (no cleanup at all, like the OOM killer or a preempted node) mid-epoch, at
an epoch boundary, or halfway through writing a checkpoint, then resumed with `fit --ckpt_path last`: its final
global step, validation metrics and weights must equal the uninterrupted run's bit for bit. Also: an interrupted
checkpoint write leaves the previous checkpoint intact, and a checkpoint of another model is refused in one line.
"""

import builtins
import errno
import io
import itertools
import json
import os
import re
import signal
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn

import datasets
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from src.cli import ReviewClassifierCLI, main
from src.data import TextClassificationDataModule
from src.model import SequenceClassifier
from tests.cli_helpers import run_cli, scalars, tiny_run_args
from tests.fixtures import write_dataset, write_tiny_bert, yelp_like_split

STEPS = 2 * 10  # 2 epochs of 80 rows in batches of 8
EVERY = 3  # periodic_checkpoint.every_n_train_steps


# ----- fault injection; the CLI subprocesses load `CrashAt` through --trainer.callbacks+= -------------------------
def sigkill() -> NoReturn:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def disk_full() -> NoReturn:
    raise OSError(errno.ENOSPC, "No space left on device (injected)")


class InterruptedWrites:
    """Inside `with`: the `at`-th write into a file opened for writing (sendfile copies count too) stores half of
    its bytes, then calls `interrupt` (which raises or kills). `count` tells how many writes happened."""

    def __init__(self, at: int, interrupt: Callable[[], NoReturn]) -> None:
        self.at, self.interrupt, self.count = at, interrupt, 0
        self._open, self._sendfile = builtins.open, os.sendfile

    def _reached(self) -> bool:
        self.count += 1
        return self.count == self.at

    def __enter__(self) -> "InterruptedWrites":
        # io.open serves os.fdopen; shutil's copies go through os.sendfile on Linux
        builtins.open = io.open = self._open_file
        os.sendfile = self._send
        return self

    def __exit__(self, *exc_info: object) -> None:
        builtins.open = io.open = self._open
        os.sendfile = self._sendfile

    def _open_file(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = self._open(file, mode, *args, **kwargs)
        return _InterruptibleFile(handle, self) if set(mode) & set("wax+") else handle

    def _send(self, out_fd: int, in_fd: int, offset: int, count: int) -> int:
        if self._reached():
            remaining = os.fstat(in_fd).st_size - offset
            self._sendfile(out_fd, in_fd, offset, max(1, min(count, remaining) // 2))
            self.interrupt()
        return self._sendfile(out_fd, in_fd, offset, count)


class _InterruptibleFile:
    def __init__(self, handle: Any, writes: InterruptedWrites) -> None:
        self._handle, self._writes = handle, writes

    def write(self, data: Any) -> int:
        if self._writes._reached():
            view = memoryview(data).cast("B")
            self._handle.write(view[: len(view) // 2])
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._writes.interrupt()
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> "_InterruptibleFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handle.close()


class CrashAt(Callback):
    """Test-only: SIGKILL this process before the batch of global step `step`, at the start of epoch `epoch`,
    halfway through writing the checkpoint of step `saving_step`, or in the middle of epoch `validating_epoch`'s
    validation (with `signal_name`: SIGKILL, or SIGINT as Ctrl-C sends it)."""

    def __init__(self, step: int = -1, epoch: int = -1, saving_step: int = -1, validating_epoch: int = -1,
                 signal_name: str = "SIGKILL") -> None:
        self.step, self.epoch, self.saving_step = step, epoch, saving_step
        self.validating_epoch, self.signal = validating_epoch, getattr(signal, signal_name)

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if trainer.current_epoch == self.validating_epoch and batch_idx == 2 and not trainer.sanity_checking:
            os.kill(os.getpid(), self.signal)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            sigkill()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            sigkill()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # runs before the checkpoint callbacks' hook (Lightning orders those last), so before this step's save
        if trainer.global_step == self.saving_step:
            save = trainer.save_checkpoint

            def save_and_crash(*args: Any, **kwargs: Any) -> None:
                with InterruptedWrites(1, sigkill):
                    save(*args, **kwargs)

            trainer.save_checkpoint = save_and_crash


# ----- runs ----------------------------------------------------------------------------------------------------
def fit_args(tiny_bert: Path, tiny_yelp: Path, experiment: str, *extra: str) -> list[str]:
    return ["fit", *tiny_run_args(tiny_bert, tiny_yelp, "--trainer.max_epochs", "2",
                                  "--periodic_checkpoint.every_n_train_steps", str(EVERY),
                                  "--trainer.logger.init_args.name", experiment, *extra)]


def run_dir_in(stdout: str, workdir: Path) -> Path:
    match = re.search(r"Run directory: (\S+)", stdout)
    assert match, stdout[-2000:]
    return workdir / match.group(1)


def load(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)  # as Lightning loads it to resume


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the module's runs, so the tokenized data is cached once."""
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def reference(tiny_bert: Path, tiny_yelp: Path, workdir: Path) -> Path:
    """The uninterrupted run's directory."""
    return run_dir_in(run_cli(fit_args(tiny_bert, tiny_yelp, "reference"), cwd=workdir).stdout, workdir)


CRASHES = [  # how the run dies -> the global step of the last.ckpt it leaves
    ({"saving_step": 6}, 3),  # mid-epoch 0, halfway through writing the step-6 checkpoint: the step-3 one stays
    ({"epoch": 1}, 10),  # at the epoch boundary, after epoch 0's validation and its checkpoint
    ({"step": 14}, 12),  # mid-epoch 1, two steps after the step-12 checkpoint
]


@pytest.mark.slow
def test_run_killed_three_times_and_resumed_ends_exactly_like_the_uninterrupted_run(
    reference: Path, tiny_bert: Path, tiny_yelp: Path, workdir: Path
) -> None:
    args = fit_args(tiny_bert, tiny_yelp, "crashing")
    last = workdir / "logs" / "crashing" / "version_0" / "checkpoints" / "last.ckpt"
    for attempt, (kill_at, step_on_disk) in enumerate(CRASHES):
        crash = json.dumps({"class_path": "tests.test_resume.CrashAt", "init_args": kill_at})
        resume = ["--ckpt_path", "last"] if attempt else []
        killed = run_cli([*args, *resume, f"--trainer.callbacks+={crash}"], cwd=workdir, check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        assert load(last)["global_step"] == step_on_disk, kill_at  # complete, loadable, the newest finished save

    resumed = run_cli([*args, "--ckpt_path", "last"], cwd=workdir)
    assert "--ckpt_path last: logs/crashing/version_0/checkpoints/last.ckpt" in resumed.stdout
    run = run_dir_in(resumed.stdout, workdir)
    assert run == last.parent.parent  # every resume continued in the first run's directory
    expected, got = load(reference / "checkpoints" / "last.ckpt"), load(last)
    assert expected["global_step"] == got["global_step"] == STEPS
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    differing = [name for name, weights in expected["state_dict"].items()
                 if not torch.equal(weights, got["state_dict"][name])]
    assert not differing, f"{len(differing)} weight tensors differ after the resumes, e.g. {differing[:3]}"
    expected_scalars, got_scalars = scalars(reference), scalars(run)
    for tag in ("val/acc", "val/loss", "val/f1_macro"):
        assert got_scalars[tag][-1] == expected_scalars[tag][-1], tag
    assert not list(last.parent.glob(".*.tmp")), "the killed save's temporary file was not cleaned up"


@pytest.mark.slow
def test_ctrl_c_and_kill_mid_validation_then_resume_ends_exactly_like_the_uninterrupted_run(
    reference: Path, tiny_bert: Path, tiny_yelp: Path, workdir: Path
) -> None:
    args = fit_args(tiny_bert, tiny_yelp, "mid_validation")
    last = workdir / "logs" / "mid_validation" / "version_0" / "checkpoints" / "last.ckpt"
    stops = [("SIGINT", 0, 1, 9), ("SIGKILL", 1, -signal.SIGKILL, 18)]  # -> exit status, step of last.ckpt
    for attempt, (signal_name, epoch, status, step_on_disk) in enumerate(stops):
        crash = json.dumps({"class_path": "tests.test_resume.CrashAt",
                            "init_args": {"validating_epoch": epoch, "signal_name": signal_name}})
        resume = ["--ckpt_path", "last"] if attempt else []
        stopped = run_cli([*args, *resume, f"--trainer.callbacks+={crash}"], cwd=workdir, check=False)
        assert stopped.returncode == status, stopped.stderr[-3000:]
        assert load(last)["global_step"] == step_on_disk, signal_name
    run = run_dir_in(run_cli([*args, "--ckpt_path", "last"], cwd=workdir).stdout, workdir)
    assert run == last.parent.parent
    expected, got = load(reference / "checkpoints" / "last.ckpt")["state_dict"], load(last)["state_dict"]
    assert all(torch.equal(weights, got[name]) for name, weights in expected.items())
    assert scalars(run)["val/acc"][-1] == scalars(reference)["val/acc"][-1]


@pytest.mark.parametrize("staging", ["same filesystem", "other filesystem"])
def test_interrupted_checkpoint_write_leaves_the_previous_checkpoint(
    staging: str, reference: Path, tiny_bert: Path, tiny_yelp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write of a save, in turn, stops halfway with a full disk: last.ckpt keeps the previous checkpoint.

    "other filesystem": $TMPDIR on another filesystem than the run (tmpfs /tmp, node-local scratch on a cluster),
    where a save staged in $TMPDIR must be copied, not renamed, into place."""
    other = Path("/dev/shm")  # tmpfs
    if staging == "other filesystem" and (not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev):
        pytest.skip("no second filesystem (/dev/shm) here")
    with tempfile.TemporaryDirectory(dir=other if staging == "other filesystem" else tmp_path) as stage_dir:
        stage = Path(stage_dir)
        monkeypatch.setattr(tempfile, "tempdir", stage_dir)
        monkeypatch.chdir(tmp_path)
        cli = ReviewClassifierCLI(SequenceClassifier, TextClassificationDataModule, run=False,
                                  args=tiny_run_args(tiny_bert, tiny_yelp))
        checkpoint_io = cli.trainer.strategy.checkpoint_io  # what the CLI's Trainer writes checkpoints with
        target = tmp_path / "checkpoints" / "last.ckpt"
        target.parent.mkdir()
        previous = (reference / "checkpoints" / "last.ckpt").read_bytes()
        target.write_bytes(previous)
        newer = {**load(target), "global_step": STEPS + 1}
        for at in itertools.count(1):
            with InterruptedWrites(at, disk_full) as writes, suppress(OSError):
                checkpoint_io.save_checkpoint(newer, target)
            if writes.count < at:  # this save ran through: each of its writes has been interrupted once
                break
            assert target.read_bytes() == previous, f"interrupting write {at} of the save damaged last.ckpt"
            assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"], f"write {at}: leftovers"
            assert not list(stage.iterdir()), f"write {at}: leftovers in $TMPDIR"
        assert at > 1
        assert load(target)["global_step"] == STEPS + 1  # and an uninterrupted save replaces it


def three_label_dataset(directory: Path) -> Path:
    def three_labels(split: datasets.Dataset) -> datasets.Dataset:
        return split.filter(lambda row: row["label"] < 3).cast_column("label", datasets.Value("int64"))

    return write_dataset(directory, {"train": three_labels(yelp_like_split(200, 0)),
                                     "test": three_labels(yelp_like_split(60, 1))})


@pytest.mark.parametrize("mismatch", ["model", "num_labels"])
def test_checkpoint_of_another_model_is_refused_in_one_line(
    mismatch: str, reference: Path, tiny_bert: Path, tiny_yelp: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    checkpoint = reference / "checkpoints" / "last.ckpt"
    if mismatch == "model":  # same family, other shapes: 64 position embeddings instead of 128
        other_bert = write_tiny_bert(tmp_path / "other_bert", max_position_embeddings=64)
        args, named = tiny_run_args(other_bert, tiny_yelp), f"model_name_or_path={str(tiny_bert)!r}"
    else:
        args = tiny_run_args(tiny_bert, three_label_dataset(tmp_path / "three"), "--data.num_labels", "3",
                             "--data.eval_size", "20")
        named = "num_labels=5 (this run: 3)"
    run_files = {path: path.stat().st_mtime_ns for path in reference.rglob("*")}
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--ckpt_path", str(checkpoint)])
    message = exit_info.value.code
    assert isinstance(message, str) and "\n" not in message, message  # sys.exit(str): one line, status 1
    assert message.startswith("error: the checkpoint was trained with") and named in message, message
    assert "--ckpt_path" in message and "config.yaml" in message  # the fix
    assert "size mismatch" not in message and len(message) < 400
    assert {path: path.stat().st_mtime_ns for path in reference.rglob("*")} == run_files  # its run is untouched
