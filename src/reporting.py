"""TensorBoard beyond loss curves, and the end-of-run summary printed to the terminal.

- `EvalReport`: per-class view of every validation epoch and of test: the confusion matrix as an image and as a
  markdown table, and per-class precision/recall scalars (`val/precision/<label name>`, `test/recall/...`).
- `RunReport`: a text summary of the run at fit start (model, parameters, data sizes, versions, git commit), the
  running best validation score (`val/acc_best`), and the HPARAMS tab with real metrics instead of Lightning's
  `hp_metric` placeholder.
- `print_run_summary`: best score, test accuracy, run dir, best checkpoint and export path, as a terminal table.

Images are drawn with Pillow (a dependency of tensorboard, which `add_image` needs anyway): no matplotlib.
"""

import importlib.metadata
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from src.predictions import label_names

REPO = Path(__file__).resolve().parents[1]
VERSIONED_PACKAGES = ("torch", "lightning", "transformers", "datasets", "tokenizers", "torchmetrics")


# ----- shared helpers ------------------------------------------------------------------------------------------
def tensorboard_logger(trainer: "pl.Trainer") -> TensorBoardLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def precision_recall(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class precision and recall from a confusion matrix (rows: true class, columns: predicted).

    A class never predicted (or never present) gets 0, as torchmetrics' default `zero_division=0` does.
    """
    matrix = matrix.double()
    hits = matrix.diagonal()
    precision = torch.where(matrix.sum(0) > 0, hits / matrix.sum(0).clamp(min=1), 0.0)
    recall = torch.where(matrix.sum(1) > 0, hits / matrix.sum(1).clamp(min=1), 0.0)
    return precision, recall


def confusion_markdown(matrix: torch.Tensor, names: Sequence[str]) -> str:
    """The confusion matrix as a markdown table, with recall per row and precision per column."""
    precision, recall = precision_recall(matrix)
    rows = [
        "| true \\ predicted | " + " | ".join(names) + " | recall |",
        "| --- |" + " ---: |" * (len(names) + 1),
        *(f"| **{name}** | " + " | ".join(str(int(v)) for v in matrix[i]) + f" | {recall[i]:.3f} |"
          for i, name in enumerate(names)),
        "| precision | " + " | ".join(f"{p:.3f}" for p in precision) + " | |",
    ]
    total = int(matrix.sum())
    return "\n".join([*rows, "", f"{total} examples, accuracy {float(matrix.diagonal().sum()) / max(total, 1):.4f}"])


def confusion_image(matrix: torch.Tensor, names: Sequence[str]) -> np.ndarray:
    """An RGB (H, W, 3) uint8 heatmap: rows are true classes, columns predictions, shaded by share of the row."""
    from PIL import Image, ImageDraw  # a tensorboard dependency

    n = len(names)
    cell = max(12, min(64, 640 // n))
    font = _font(max(9, min(16, cell // 3)))
    label_width = max(int(font.getlength(name)) for name in [*names, "true"]) + 12
    top = label_width  # column labels are the same names, turned 90 degrees
    legend = "rows: true class, columns: predicted"
    footer = int(font.size * 1.8) if hasattr(font, "size") else 20
    width = max(label_width + n * cell + 8, int(font.getlength(legend)) + 16)
    image = Image.new("RGB", (width, top + n * cell + footer), "white")
    draw = ImageDraw.Draw(image)
    counts = matrix.long()
    shares = counts.double() / counts.sum(1, keepdim=True).clamp(min=1)
    for i in range(n):
        y = top + i * cell
        draw.text((label_width - 6, y + cell / 2), names[i], fill="black", font=font, anchor="rm")
        for j in range(n):
            x = label_width + j * cell
            share = float(shares[i, j])
            color = tuple(round(255 + share * (c - 255)) for c in (8, 48, 107))  # white to dark blue
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=color, outline=(220, 220, 220))
            if cell >= 24:
                draw.text((x + cell / 2, y + cell / 2), str(int(counts[i, j])), font=font, anchor="mm",
                          fill="white" if share > 0.5 else "black")
    for j, name in enumerate(names):  # column labels, drawn flat then turned to read bottom-up
        width = int(font.getlength(name)) + 2
        label = Image.new("RGB", (width, cell), "white")
        ImageDraw.Draw(label).text((0, cell / 2), name, fill="black", font=font, anchor="lm")
        label = label.rotate(90, expand=True)
        image.paste(label, (label_width + j * cell, top - 6 - width))
    draw.text((8, top + n * cell + footer / 2), legend, fill="gray", font=font, anchor="lm")
    return np.asarray(image)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


# ----- callbacks -------------------------------------------------------------------------------------------------
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


class RunReport(Callback):
    """The run at a glance in TensorBoard: a summary text, the best score so far, and a useful HPARAMS tab.

    HPARAMS: TensorBoard keeps the FIRST hparams summary it reads in a run directory and ignores later ones,
    and shows, per declared metric, the last value of the scalar with that tag. Lightning's TensorBoardLogger
    writes its summary at start with a placeholder metric `hp_metric` = -1 (`default_hp_metric`), so a summary
    logged at the end of fit would never be shown. This callback therefore turns the placeholder off and writes
    the summary first, declaring the real metric tags (best and last val/acc, val/loss, test/acc, ...); their
    values fill in as they are logged, including a later `test` run writing into the same run directory.

    Args:
        monitor, mode: the score whose running best is logged as `<monitor>_best` (what the best checkpoint keeps);
            None: no best score.
        metrics: metric tags shown in the HPARAMS tab; default: `<monitor>_best`, `<monitor>`, val/loss, test/acc,
            test/f1_macro.
    """

    def __init__(self, monitor: str | None = "val/acc", mode: Literal["max", "min"] = "max",
                 metrics: list[str] | None = None) -> None:
        self.monitor, self.mode = monitor, mode
        scores = [f"{monitor}_best", monitor] if monitor else []
        self.metrics = metrics or list(dict.fromkeys([*scores, "val/acc", "val/loss", "test/acc", "test/f1_macro"]))
        self.best: float | None = None

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        logger = tensorboard_logger(trainer)
        if logger is None:
            return
        logger._default_hp_metric = False  # Lightning's placeholder would take the HPARAMS tab (see above)
        if trainer.is_global_zero:  # Lightning logs hparams after this hook: ours come first
            exp, ssi, sei = hparams_summaries(tensorboard_hparams(trainer, pl_module), dict.fromkeys(self.metrics, 0))
            writer = logger.experiment._get_file_writer()
            for summary in (exp, ssi, sei):
                writer.add_summary(summary, trainer.global_step)

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        logger = tensorboard_logger(trainer)
        if logger is not None and trainer.is_global_zero:
            facts = run_facts(trainer, pl_module)
            facts["run directory"] = logger.log_dir
            table = ["| | |", "| --- | --- |", *(f"| {key} | {value} |" for key, value in facts.items())]
            logger.experiment.add_text("run/summary", "\n".join(table), trainer.global_step)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        score = trainer.callback_metrics.get(self.monitor) if self.monitor else None
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or score is None:
            return
        score = float(score)
        if self.best is None or (score > self.best if self.mode == "max" else score < self.best):
            self.best = score
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"{self.monitor}_best": self.best}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}  # a resumed run keeps its best score

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")


def tensorboard_hparams(trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> dict[str, Any]:
    """The module's and data module's init arguments, as Lightning logs them, in types TensorBoard can show."""
    params = dict(pl_module.hparams_initial)
    if trainer.datamodule is not None:
        params.update(trainer.datamodule.hparams_initial)
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value)
            for key, value in params.items() if not key.startswith("_")}  # LightningCLI's _class_path, ...


def run_facts(trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> dict[str, str]:
    """What a reader of the run needs to know to trust or reproduce it."""
    hparams = pl_module.hparams
    total = sum(p.numel() for p in pl_module.parameters())
    trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
    facts = {
        "model": f"`{hparams.get('model_name_or_path', type(pl_module).__name__)}` ({type(pl_module).__name__})",
        "parameters": f"{total:,} ({trainable:,} trainable)",
    }
    datamodule = trainer.datamodule
    if datamodule is not None:
        if "dataset" in datamodule.hparams:
            facts["dataset"] = f"`{datamodule.hparams.dataset}`"
        splits = getattr(datamodule, "splits", None) or {}
        if splits:
            facts["rows per split"] = ", ".join(f"{name} {len(split):,}" for name, split in splits.items())
    facts["hardware"] = (f"{trainer.world_size} x {type(trainer.accelerator).__name__.removesuffix('Accelerator')}"
                         f", precision {trainer.precision}")
    facts["versions"] = ", ".join([f"python {platform.python_version()}", *_versions()])
    facts["git commit"] = git_commit() or "unknown (not a git checkout)"
    facts["command"] = "`" + " ".join(sys.argv).replace("|", "\\|") + "`"
    return facts


def _versions() -> list[str]:
    found = []
    for package in VERSIONED_PACKAGES:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def git_commit(repo: Path = REPO) -> str | None:
    """HEAD of the code's checkout, marked `+ uncommitted changes` when the working tree differs from it."""
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit} + uncommitted changes" if dirty else commit


# ----- end of run ---------------------------------------------------------------------------------------------
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
