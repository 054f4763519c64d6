"""Run the CLI in a process of its own from a scratch directory, and read TensorBoard event files back."""

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
# A CLI process forks from a server that imported src.cli once (~0.1 s) instead of importing torch, Lightning and
# transformers afresh (~9 s, most of this suite's time). DDP runs start a real interpreter (Lightning relaunches
# the command line of `python -m src.cli` for rank 1, which a forked child does not have), as do `fresh` ones.
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["src.cli"])  # it imports torch, Lightning, transformers, datasets


def run_cli(args: list[str], cwd: Path, check: bool = True, timeout: int = 600,
            fresh: bool = False) -> subprocess.CompletedProcess:
    """`python -m src.cli ARGS` in `cwd`: its exit status (negative: killed by that signal), stdout and stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(cwd / "hf_datasets_cache"), "PYTHONUNBUFFERED": "1"}
    if fresh or any("ddp" in arg for arg in args):
        result = subprocess.run([sys.executable, "-m", "src.cli", *args], cwd=cwd, env=env, capture_output=True,
                                text=True, timeout=timeout)
    else:
        result = _run_forked(args, cwd, env, timeout)
    if check and result.returncode != 0:
        output = f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        raise AssertionError(f"CLI {args} exited {result.returncode}:\n{output}")
    return result


def _run_forked(args: list[str], cwd: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as out:
        stdout, stderr = Path(out, "stdout"), Path(out, "stderr")
        process = _FORKS.Process(target=_cli_main, args=(args, cwd, env, stdout, stderr))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["src.cli", *args], timeout)
        return subprocess.CompletedProcess(["src.cli", *args], process.exitcode, stdout.read_text(),
                                           stderr.read_text())


def _cli_main(args: list[str], cwd: Path, env: dict[str, str], stdout: Path, stderr: Path) -> None:
    """In the forked child: the environment, directory, argv and unbuffered output of a fresh `python -m src.cli`."""
    import datasets
    import torch

    from src.cli import main

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    datasets.config.HF_DATASETS_CACHE = Path(env["HF_DATASETS_CACHE"])  # read once, at import
    if env.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    for fd, path in ((1, stdout), (2, stderr)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(opened, fd)
        os.close(opened)
        getattr(sys, ("stdout", "stderr")[fd - 1]).reconfigure(line_buffering=True)  # a killed run keeps its lines
    sys.argv = [str(REPO / "src/cli.py"), *args]
    main()


def tiny_run_args(tiny_bert: Path, tiny_yelp: Path, *extra: str) -> list[str]:
    """The tutorial config, shrunk to the tiny fixtures."""
    return [
        "--config", str(REPO / "configs/yelp_bert.yaml"),
        "--model.model_name_or_path", str(tiny_bert), "--data.dataset", str(tiny_yelp),
        "--data.max_length", "64", "--data.train_size", "80", "--data.eval_size", "41",
        "--trainer.accelerator", "cpu", "--trainer.log_every_n_steps", "2", "--trainer.enable_progress_bar", "false",
        *extra,
    ]


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar tag in the run's event files, with its values in logging order."""
    return {tag: [value for _, value in points] for tag, points in scalar_points(run_dir).items()}


def scalar_points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in the run's event files, as (step, value) in logging order."""
    values: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            values.setdefault(tag, []).extend((event.step, event.value) for event in accumulator.Scalars(tag))
    return values
