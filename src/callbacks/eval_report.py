"""`EvalReport`: the per-class view of every validation epoch and of test, in TensorBoard and every logger.

Logs the confusion matrix as an image and as a markdown table, and per-class precision/recall scalars
(`val/precision/<label name>`, `test/recall/...`). Images are drawn with Pillow (a tensorboard dependency).
"""

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from src.callbacks.predictions_writer import label_names
from src.utils.confusion import confusion_image, confusion_markdown, precision_recall
from src.utils.tensorboard import tensorboard_logger


class EvalReport(Callback):
    """Confusion matrix (image + table) and per-class precision/recall for every validation epoch and for test.

    Reads the module's `val_confusion` / `test_confusion` metrics: callbacks' epoch-end hooks run before the
    module's, which resets them. The scalars go to every logger; image and table to TensorBoard.
    """

    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not trainer.sanity_checking:  # a couple of batches from an untrained model say nothing
            self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._report(trainer, pl_module, "test")

    def _report(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        confusion = getattr(pl_module, f"{stage}_confusion", None)
        if confusion is None:
            return
        matrix = confusion.compute().cpu()  # syncs across ranks: every rank must call it
        if not trainer.is_global_zero or matrix.sum() == 0:
            return
        names = label_names(pl_module, len(matrix))
        precision, recall = precision_recall(matrix)
        metrics = {f"{stage}/precision/{name}": float(p) for name, p in zip(names, precision, strict=True)}
        metrics.update({f"{stage}/recall/{name}": float(r) for name, r in zip(names, recall, strict=True)})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if (logger := tensorboard_logger(trainer)) is not None:
            writer = logger.experiment
            writer.add_image(f"{stage}/confusion_matrix", confusion_image(matrix, names), trainer.global_step,
                             dataformats="HWC")
            writer.add_text(f"{stage}/confusion_matrix", confusion_markdown(matrix, names), trainer.global_step)


