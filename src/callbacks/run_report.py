"""`RunReport`: a text summary of the run at fit start (model, parameters, data sizes, versions, git commit), the
running best validation score (`val/acc_best`), and the HPARAMS tab with real metrics instead of Lightning's
`hp_metric` placeholder.
"""

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from src.utils.tensorboard import tensorboard_logger

REPO = Path(__file__).resolve().parents[2]
VERSIONED_PACKAGES = ("torch", "lightning", "transformers", "datasets", "tokenizers", "torchmetrics")


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


