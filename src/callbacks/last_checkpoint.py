"""`LastCheckpoint`: a last.ckpt that always holds the newest state, for resuming."""

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Writes last.ckpt every N optimizer steps, after every validation and at the end of training.

    Since Lightning 2.5 a `ModelCheckpoint` refreshes last.ckpt after validation only when it also saved a top-k
    checkpoint, so with val/acc not improving the newest state would never reach last.ckpt.
    """

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_if_new(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_new(trainer)

    def _save_last_if_new(self, trainer: Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # skips sanity checks and steps saved already
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
