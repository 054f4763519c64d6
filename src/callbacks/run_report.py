"""`RunReport`: a text summary of the run at fit start (model, parameters, data sizes, versions, git commit), the
running best validation score (`val/acc_best`), and the HPARAMS tab with real metrics instead of Lightning's
`hp_metric` placeholder.
"""

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from src.utils.tensorboard import tensorboard_logger

REPO = Path(__file__).resolve().parents[2]
VERSIONED_PACKAGES = ("torch", "lightning", "transformers", "datasets", "tokenizers", "torchmetrics")


class RunReport(Callback):
    """The run at a glance in TensorBoard: a summary text and an HPARAMS tab that compares runs on real metrics.

    TensorBoard keeps the first hparams summary of a run directory and shows, per declared metric tag, the last
    value logged under it. So the logger's placeholder `hp_metric` must be off (`default_hp_metric: false`, set in
    configs/defaults.yaml), and this summary declares the real tags; their values fill in as they are logged.

    Args:
        metrics: metric tags shown in the HPARAMS tab.
    """

    def __init__(self, metrics: list[str] | None = None) -> None:
        self.metrics = metrics or ["val/acc_best", "val/acc", "val/loss", "test/acc", "test/f1_macro"]

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        logger = tensorboard_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        facts = run_facts(trainer, pl_module)
        facts["run directory"] = logger.log_dir
        table = ["| | |", "| --- | --- |", *(f"| {key} | {value} |" for key, value in facts.items())]
        logger.experiment.add_text("run/summary", "\n".join(table), trainer.global_step)
        if trainer.global_step == 0:  # a resumed run has its summary already
            exp, ssi, sei = hparams_summaries(tensorboard_hparams(trainer, pl_module), dict.fromkeys(self.metrics, 0))
            for summary in (exp, ssi, sei):
                logger.experiment.file_writer.add_summary(summary, trainer.global_step)


def tensorboard_hparams(trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> dict[str, Any]:
    """The module's and data module's init arguments, the optimizer's and the training length, in types TensorBoard
    can show (a sweep over trainer.max_epochs compares in the HPARAMS tab too)."""
    params = dict(pl_module.hparams_initial)
    if trainer.datamodule is not None:
        params.update(trainer.datamodule.hparams_initial)
    if trainer.optimizers:  # the optimizer is a config choice, not a hyperparameter of the module
        optimizer = trainer.optimizers[0]
        params["optimizer"] = type(optimizer).__name__
        params.update({key: optimizer.defaults[key] for key in ("lr", "weight_decay") if key in optimizer.defaults})
    params.update({"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps,
                   "accumulate_grad_batches": trainer.accumulate_grad_batches})
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


