"""Command line: `python -m src.cli {fit,validate,test,predict} --config configs/X.yaml [--section.key value]`.

Defaults added here: TensorBoard logging under `logs/<experiment>/version_N/` (with the run's config.yaml and
checkpoints/), best-by-`val/acc` and last checkpoints, a learning-rate monitor, and `seed_everything: 42`.
"""

import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from src.callbacks.eval_report import EvalReport
from src.callbacks.last_checkpoint import LastCheckpoint
from src.callbacks.predictions_writer import PredictionsWriter
from src.callbacks.rng_state_checkpoint import RngStateCheckpoint
from src.callbacks.run_report import RunReport
from src.callbacks.throughput_monitor import ThroughputMonitor
from src.data import TextClassificationDataModule
from src.export import export_checkpoint
from src.model import NonFiniteLossError, SequenceClassifier
from src.utils.checkpoint_io import AtomicCheckpointIO
from src.utils.errors import UserInputError
from src.utils.runs import newest_run_checkpoint, run_dir_of
from src.utils.summary import print_run_summary

TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


class QuietUsageParser(LightningArgumentParser):
    """On a bad argument, print just the error and the --help tip, not the ~60-line usage block above them."""

    def print_usage(self, file: Any = None) -> None:
        pass


class ReviewClassifierCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.tokenizer_name_or_path")
        parser.link_arguments("data.num_labels", "model.num_labels")
        parser.link_arguments("seed_everything", "data.seed")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.filename": "epoch{epoch}-step{step}-val_acc{val/acc:.4f}",
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.save_last": False,  # periodic_checkpoint writes last.ckpt
            "checkpoint.enable_version_counter": False,
        })
        # last.ckpt, for resuming, is this callback's alone: written every N optimizer steps (0 = only after
        # validation), after every validation and when training ends, so it always holds the newest state
        parser.add_lightning_class_args(LastCheckpoint, "periodic_checkpoint")
        parser.set_defaults({
            "periodic_checkpoint.every_n_train_steps": 500,
            "periodic_checkpoint.save_top_k": 0,
            "periodic_checkpoint.save_last": True,
            "periodic_checkpoint.enable_version_counter": False,
        })
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        # TensorBoard beyond loss curves: confusion matrices and per-class precision/recall (eval_report); a run
        # summary text, the running best score and an HPARAMS tab with real metrics (run_report)
        parser.add_lightning_class_args(EvalReport, "eval_report")
        parser.add_lightning_class_args(RunReport, "run_report")
        parser.link_arguments("checkpoint.monitor", "run_report.monitor")
        parser.link_arguments("checkpoint.mode", "run_report.mode")
        # `predict` writes RUN_DIR/predictions.jsonl (predictions.output_format: csv for a CSV file)
        parser.add_lightning_class_args(PredictionsWriter, "predictions")
        parser.add_lightning_class_args(ThroughputMonitor, "throughput")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="fit: afterwards, test the best checkpoint on the test split")
        parser.add_argument("--export_best", type=bool, default=False,
                            help="fit: afterwards, export the best checkpoint as a HF model to RUN_DIR/hf_model")
        # plain tqdm lines read well in cluster job logs; configs/progress/rich.yaml switches to Rich
        parser.add_lightning_class_args(ProgressBar, "progress_bar", subclass_mode=True, required=False)
        parser.set_defaults({"progress_bar": {"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"}})

    def _parse_ckpt_path(self) -> None:
        """No-op. Lightning would overwrite the model's config with the hyperparameters stored in an explicit
        `--ckpt_path` file, silently ignoring the config and command line (a moved model dir, another num_labels;
        Lightning PR #21455) and not doing so for `last`/`best`. Here the config always decides, and
        `after_instantiate_classes` refuses a checkpoint whose weights do not fit the configured model."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand
        if config.trainer.get("enable_progress_bar") is False:
            config.progress_bar = None
        ckpt_path = config.get("ckpt_path")
        logger = config.trainer.get("logger")
        tensorboard = logger is not None and not isinstance(logger, bool) and logger.class_path == TENSORBOARD
        if ckpt_path in ("last", "best") and tensorboard:
            experiment = logger.init_args.name
            config.ckpt_path = str(newest_run_checkpoint(Path(logger.init_args.save_dir), experiment, ckpt_path))
            print(f"--ckpt_path {ckpt_path}: {config.ckpt_path}")
        elif ckpt_path and not Path(ckpt_path).is_file() and ckpt_path not in ("last", "best", "hpc", "registry"):
            raise UserInputError(f"checkpoint '{ckpt_path}' does not exist: pass a .ckpt file, 'last' or 'best'")
        run_dir = run_dir_of(Path(config.ckpt_path)) if config.get("ckpt_path") else None
        if run_dir is not None and tensorboard:  # keep writing into the checkpoint's run directory
            logger.init_args.save_dir = str(run_dir.parent.parent)
            logger.init_args.name = run_dir.parent.name
            logger.init_args.version = run_dir.name

    def after_instantiate_classes(self) -> None:
        # before anything runs or is written (config.yaml, events): a checkpoint of another model fails here
        ckpt_path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            self.model.check_checkpoint_fits(torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks = [
            callback for callback in trainer.callbacks
            if callback is not None  # progress_bar: null
            and not (isinstance(callback, LearningRateMonitor) and not trainer.loggers)  # --trainer.logger false
        ]
        trainer.callbacks.insert(0, RngStateCheckpoint())  # exact resume: dropout continues its random stream
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default; keep a user's plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def after_fit(self) -> None:
        if self.config.fit.test_after_fit:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best")
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank must ask
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        exported = None
        if self.config.fit.export_best and self.trainer.is_global_zero and best and log_dir:
            exported = export_checkpoint(best, Path(log_dir) / "hf_model")
            print(f"Exported the best checkpoint to {exported}")
        print_run_summary(self.trainer, export_path=exported, log_dir=log_dir)
        if self.trainer.is_global_zero and log_dir and isinstance(self.trainer.logger, TensorBoardLogger):
            print(f"\nRun directory: {log_dir}\nView it: tensorboard --logdir {Path(log_dir).parent.parent}")


def main(args: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the data module parallelises tokenization itself
    logging.getLogger("transformers").setLevel(logging.ERROR)  # load reports a user cannot act on
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs for fp32 runs; no effect on CPU
    try:
        ReviewClassifierCLI(
            SequenceClassifier,
            TextClassificationDataModule,
            seed_everything_default=42,
            parser_class=QuietUsageParser,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "logger": {"class_path": TENSORBOARD, "init_args": {"save_dir": "logs", "name": "default"}},
                "use_distributed_sampler": False,
            },
            args=args,
        )
    except (UserInputError, NonFiniteLossError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
