"""The end-of-run summary printed to the terminal: best score, test accuracy, run dir, checkpoint, export."""

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


def run_summary_rows(trainer: "pl.Trainer", log_dir: str | None,
                     export_path: str | Path | None = None) -> list[tuple[str, str]]:
    """(label, value) rows for the end-of-run table; only what this run produced."""
    rows = []
    checkpoint = next((cb for cb in trainer.checkpoint_callbacks
                       if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_path), None)
    if checkpoint is not None and checkpoint.best_model_score is not None:
        rows.append((f"best {checkpoint.monitor}", f"{float(checkpoint.best_model_score):.4f}"))
    if (test_acc := trainer.callback_metrics.get("test/acc")) is not None:
        rows.append(("test/acc", f"{float(test_acc):.4f}"))
    if log_dir:
        rows.append(("run directory", str(log_dir)))
    if checkpoint is not None:
        rows.append(("best checkpoint", checkpoint.best_model_path))
    if export_path:
        rows.append(("export", str(export_path)))
    return rows


def format_table(rows: Sequence[tuple[str, str]], title: str = "Run summary") -> str:
    """A boxed two-column table in plain ASCII (safe for any terminal and log file)."""
    width = max([len(label) for label, _ in rows] + [0])
    value_width = max([len(value) for _, value in rows] + [len(title) - width - 3])
    rule = f"+-{'-' * width}-+-{'-' * value_width}-+"
    lines = [rule, f"| {title:<{width + value_width + 3}} |", rule]
    lines += [f"| {label:<{width}} | {value:<{value_width}} |" for label, value in rows]
    return "\n".join([*lines, rule])


def print_run_summary(trainer: "pl.Trainer", export_path: str | Path | None = None, log_dir: str | None = None,
                      file: TextIO | None = None) -> None:
    """Print the end-of-run table on rank 0.

    Without `log_dir` it asks `trainer.log_dir`, a collective under DDP: then call it on every rank.
    """
    log_dir = log_dir if log_dir is not None else trainer.log_dir
    rows = run_summary_rows(trainer, log_dir, export_path) if trainer.is_global_zero else []
    if rows:  # nothing to report after fast_dev_run
        print("\n" + format_table(rows), file=file or sys.stdout)
