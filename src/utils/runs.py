"""Run directories: `<save_dir>/<experiment>/version_N/` holds config.yaml, logs and checkpoints/.

`--ckpt_path last|best` name a checkpoint of the newest run; validate/test/predict on a run's checkpoint write into
`RUN_DIR/eval/<command>_<time>/`, beside the training curves and config, never over them.
"""

import re
import time
from pathlib import Path

from src.utils.checkpoint_io import load_checkpoint
from src.utils.errors import UserInputError

VERSION = re.compile(r"version_(\d+)")


def training_runs(log_root: Path, experiment: str) -> list[Path]:
    """The experiment's run directories (those with a config.yaml), oldest first by version number."""
    runs = [p for p in (log_root / experiment).glob("version_*") if VERSION.fullmatch(p.name) and (p / "config.yaml")
            .is_file()]
    return sorted(runs, key=lambda p: int(VERSION.fullmatch(p.name).group(1)))


def newest_run_checkpoint(log_root: Path, experiment: str, which: str) -> Path:
    """`last` or `best` checkpoint of the newest run of `experiment`; refuses if that run has none."""
    runs = training_runs(log_root, experiment)
    if not runs:
        raise UserInputError(f"--ckpt_path {which}: experiment '{experiment}' has no runs under {log_root}: train "
                             "one first, or pass a checkpoint file path")
    newest = runs[-1]
    last = newest / "checkpoints" / "last.ckpt"
    if not last.is_file():
        older = next((r / "checkpoints" / "last.ckpt" for r in reversed(runs[:-1])
                      if (r / "checkpoints" / "last.ckpt").is_file()), None)
        hint = f"; to use the run before it, pass --ckpt_path {older}" if older else ""
        raise UserInputError(f"--ckpt_path {which}: the newest run {newest} has no checkpoint (it stopped before its "
                             f"first save){hint}")
    if which == "last":
        return last
    state = load_checkpoint(last)
    recorded = next((s.get("best_model_path") for key, s in state.get("callbacks", {}).items()
                     if key.startswith("ModelCheckpoint") and s.get("best_model_path")), None)
    # the path was recorded relative to the directory fit ran in: look for the file in the run itself
    best = newest / "checkpoints" / Path(recorded).name if recorded else None
    if best is None or not best.is_file():
        raise UserInputError(f"--ckpt_path best: the run {newest} has no best checkpoint on disk (recorded: "
                             f"{recorded}); pass --ckpt_path last or a checkpoint file")
    return best


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory holding `checkpoint` (`.../version_N/checkpoints/x.ckpt`), if it is laid out like ours."""
    if checkpoint.parent.name == "checkpoints" and (checkpoint.parent.parent / "config.yaml").exists():
        return checkpoint.parent.parent
    return None


def claim_new_run(log_root: Path, experiment: str) -> int:
    """Create the next `version_N` directory and return N. `mkdir` is atomic, so fits started at the same time
    (one experiment, several terminals or jobs) never share a run directory."""
    (log_root / experiment).mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in (log_root / experiment).iterdir() if (m := VERSION.fullmatch(p.name))]
    n = max(numbers, default=-1) + 1
    while True:
        try:
            (log_root / experiment / f"version_{n}").mkdir()
            return n
        except FileExistsError:
            n += 1


def eval_version(run_dir: Path, command: str) -> str:
    """A new `eval/<command>_<time>` directory name in `run_dir`, unique even for runs started in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, n = f"{command}_{stamp}", 1
    while (run_dir / "eval" / name).exists():
        n += 1
        name = f"{command}_{stamp}-{n}"
    return name
