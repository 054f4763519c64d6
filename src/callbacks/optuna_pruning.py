"""`OptunaPruning`: the trial side of `python -m src.sweep`. The sweep adds it to each trial's `fit`
(`--trainer.callbacks+=src.callbacks.optuna_pruning.OptunaPruning`); it reconnects to the study by trial id.

It is optuna-integration's Lightning pruning callback (reports `monitor` after every validation, step = epoch, and
asks the study's pruner), except that a pruned trial stops like an early-stopped run, checkpoints and test included,
instead of raising out of `fit`; and it records for the sweep what only the trial sees: the best monitor value
and checkpoint, test metrics, and the time from launch to the first training step.
"""

import os
import time

import lightning.pytorch as pl
import optuna
from lightning.pytorch.trainer.states import TrainerFn
from optuna_integration import PyTorchLightningPruningCallback

# where the integration keeps a DDP trial's reports (private; on_fit_start below must create it)
from optuna_integration.pytorch_lightning.pytorch_lightning import _INTERMEDIATE_VALUE

from src.utils.optuna_study import PRUNED_KEY, STORAGE_ENV, is_rdb_url, load_trial


class OptunaPruning(PyTorchLightningPruningCallback):
    """Args:
        study_name, trial_id: the running trial to report to (the sweep passes both).
        monitor: the metric reported and optimized (the sweep passes the checkpoint monitor or `--metric`).
        storage: the study's storage string; default: the `SWEEP_STORAGE` environment variable, which the sweep
            sets, so a database password never appears on a command line or in config.yaml.
        launched_at: `time.time()` when the sweep started this process, to measure the per-trial overhead.
    """

    def __init__(self, study_name: str, trial_id: int, monitor: str = "val/acc", storage: str | None = None,
                 launched_at: float | None = None) -> None:
        storage = storage or os.environ[STORAGE_ENV]
        super().__init__(load_trial(storage, study_name, trial_id), monitor)
        self.trial_id, self.launched_at, self.rdb = trial_id, launched_at, is_rdb_url(storage)

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # under DDP the integration accepts only an RDB storage (its in-process cache of RDB trials); the sweep
        # reads each trial afresh from the storage, so a journal file serves a multi-GPU trial as well
        if self.rdb:
            return super().on_fit_start(trainer, pl_module)
        self.is_ddp_backend = trainer.world_size > 1
        if self.is_ddp_backend and trainer.is_global_zero:
            self._trial.storage.set_trial_system_attr(self.trial_id, _INTERMEDIATE_VALUE, {})

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch, batch_idx) -> None:
        if self.launched_at is not None and trainer.is_global_zero:
            self._trial.set_user_attr("startup_s", round(time.time() - self.launched_at, 2))
            self.launched_at = None

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        try:
            super().on_validation_end(trainer, pl_module)
        except optuna.TrialPruned as pruned:  # single process; under DDP the integration stops the trainer and marks
            # the trial with PRUNED_KEY itself
            print(f"Optuna: {pruned} Stopping this trial.")
            trainer.should_stop = True
            self._trial.storage.set_trial_system_attr(self.trial_id, PRUNED_KEY, True)

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        checkpoint = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None) == self.monitor),
                          None)
        if trainer.is_global_zero and checkpoint is not None and checkpoint.best_model_score is not None:
            self._trial.set_user_attr("best_value", float(checkpoint.best_model_score))
            self._trial.set_user_attr("best_checkpoint", checkpoint.best_model_path)

    def on_test_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.is_global_zero:  # test/acc, test/f1_macro, test/loss; not the per-class test/recall/<label>
            metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                       if name.startswith("test/") and name.count("/") == 1}
            self._trial.set_user_attr("test_metrics", metrics)
