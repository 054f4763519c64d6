"""`LastCheckpoint`: a last.ckpt that always holds the newest state, for resuming (`--ckpt_path last`)."""

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn


class LastCheckpoint(Checkpoint):
    """Writes `checkpoints/last.ckpt` every N optimizer steps, after every validation and when training ends.

    A `Checkpoint` runs after the other callbacks, in list order, so put it after the best-checkpoint callback: the
    best path it records is then the new one. The best callback saves at epoch end (after validation), so last.ckpt
    is written again there when the best checkpoint changed.

    Args:
        every_n_train_steps: also save every N optimizer steps (0: only after validation and at the end).
    """

    def __init__(self, every_n_train_steps: int = 500) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps={every_n_train_steps} must be >= 0")
        self.every_n_train_steps = every_n_train_steps
        self.path: Path | None = None
        self._saved: tuple[int, str] | None = None  # (global step, best checkpoint path) of the last save

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        best = trainer.checkpoint_callback
        directory = best.dirpath if best is not None and best.dirpath else None
        self.path = Path(directory or Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints") / "last.ckpt"

    def on_train_batch_end(self, trainer: "pl.Trainer", *args: object) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._saved is not None and self._saved[0] == trainer.global_step:
            self._save(trainer)  # rewritten only if the best checkpoint changed since

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._save(trainer)

    def _save(self, trainer: "pl.Trainer") -> None:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if trainer.fast_dev_run or trainer.global_step == 0 or self._saved == (trainer.global_step, best):
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state; every rank calls it, one writes
        self._saved = (trainer.global_step, best)
