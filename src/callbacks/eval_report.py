"""`EvalReport`: the confusion matrix of every validation epoch and of test, as an image and a markdown table.

It counts from what `validation_step` / `test_step` return (`preds`, `labels`), in a torchmetrics confusion matrix
of its own (synced across ranks, each example once). Per-class precision/recall are the module's metrics. Other
loggers than TensorBoard get nothing from it.
"""

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torchmetrics.classification import MulticlassConfusionMatrix

from src.utils.confusion import confusion_image, confusion_markdown
from src.utils.tensorboard import tensorboard_logger


class EvalReport(Callback):
    """Confusion matrix image + table in TensorBoard, per validation epoch (not sanity checks) and per test."""

    def __init__(self) -> None:
        self.confusion: MulticlassConfusionMatrix | None = None

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self.names = [str(name) for name in pl_module.hparams["label_names"]]
        self.confusion = MulticlassConfusionMatrix(len(self.names)).to(pl_module.device)

    def _update(self, trainer: "pl.Trainer", outputs: Any) -> None:
        if trainer.sanity_checking or not isinstance(outputs, dict) or "preds" not in outputs:
            return  # a couple of batches from an untrained model say nothing
        self.confusion.to(outputs["preds"].device).update(outputs["preds"], outputs["labels"])

    def on_validation_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(trainer, outputs)

    def on_test_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(trainer, outputs)

    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not trainer.sanity_checking:
            self._report(trainer, "val")

    def on_test_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._report(trainer, "test")

    def _report(self, trainer: "pl.Trainer", stage: str) -> None:
        if not self.confusion.update_called:
            return
        matrix = self.confusion.compute().cpu()  # syncs across ranks: every rank must call it
        self.confusion.reset()
        logger = tensorboard_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        writer = logger.experiment
        writer.add_image(f"{stage}/confusion_matrix", confusion_image(matrix, self.names), trainer.global_step,
                         dataformats="HWC")
        writer.add_text(f"{stage}/confusion_matrix", confusion_markdown(matrix, self.names), trainer.global_step)
