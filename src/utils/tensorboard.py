"""Helpers for TensorBoard-only extras: other loggers skip them quietly."""

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger


def tensorboard_logger(trainer: "pl.Trainer") -> TensorBoardLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)
