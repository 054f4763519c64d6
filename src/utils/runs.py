"""Run directories: `logs/<experiment>/version_N/` holds config.yaml, TensorBoard events and checkpoints/.

Helpers that let `--ckpt_path` name a run's checkpoint by keyword and keep writing into that run's directory.
"""

from pathlib import Path

import torch

from src.utils.errors import UserInputError


def newest_run_checkpoint(log_root: Path, experiment: str, which: str) -> Path:
    """`last` or `best` checkpoint of the newest run of `experiment` that has one."""
    runs = sorted((log_root / experiment).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserInputError(
            f"--ckpt_path {which}: no run of experiment '{experiment}' under {log_root} has checkpoints/last.ckpt; "
            "pass a checkpoint file path instead"
        )
    last = runs[-1]
    if which == "last":
        return last
    state = torch.load(last, map_location="cpu", mmap=True, weights_only=True)
    best = next((s.get("best_model_path") for k, s in state.get("callbacks", {}).items()
                 if k.startswith("ModelCheckpoint") and s.get("best_model_path")), None)
    if not best or not Path(best).is_file():
        raise UserInputError(f"--ckpt_path best: the run {last.parent.parent} recorded no best checkpoint")
    return Path(best)


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory holding `checkpoint` (`.../version_N/checkpoints/x.ckpt`), if it is laid out like ours."""
    if checkpoint.parent.name == "checkpoints" and (checkpoint.parent.parent / "config.yaml").exists():
        return checkpoint.parent.parent
    return None
