"""Run the CLI in a subprocess from a scratch directory, and read TensorBoard event files back."""

import os
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(cwd / "hf_datasets_cache"), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "src.cli", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        output = f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        raise AssertionError(f"CLI {args} exited {result.returncode}:\n{output}")
    return result


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
