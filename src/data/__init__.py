"""The data side: `TextClassificationDataModule` and what it owns (checks, splits, tokenize + cache, samplers)."""

from src.data.datamodule import TextClassificationDataModule

__all__ = ["TextClassificationDataModule"]
