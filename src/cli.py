"""Command line: `python -m src.cli {fit,validate,test,predict} --config configs/X.yaml [--section.key value]`.

Every command starts from configs/defaults.yaml (logger, callbacks, checkpoint IO, optimizer), then the given
configs and flags. Added here: argument links (the model is named once), the best checkpoint (`checkpoint`) and
last.ckpt (`periodic_checkpoint`) sections, and run directories you can trust:
- `fit --ckpt_path last|best|FILE` resumes into the checkpoint's run directory (its config.yaml is kept; the
  resumed run's config goes beside it);
- validate/test/predict on a run's checkpoint write into `RUN_DIR/eval/<command>_<time>/`, so the training
  curves, config and checkpoints of the run are never touched.
"""

import errno
import importlib
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from src.callbacks.last_checkpoint import LastCheckpoint
from src.data import TextClassificationDataModule
from src.export import export_checkpoint
from src.model import NonFiniteLossError, SequenceClassifier
from src.utils.checkpoint_io import load_checkpoint
from src.utils.errors import UserInputError
from src.utils.runs import VERSION, claim_new_run, eval_version, newest_run_checkpoint, run_dir_of
from src.utils.summary import print_run_summary

DEFAULTS = Path(__file__).resolve().parents[1] / "configs" / "defaults.yaml"
CLAIMED_RUN = "REVIEW_CLASSIFIER_RUN_VERSION"  # the run a fit claimed, for the DDP processes Lightning starts


class QuietUsageParser(LightningArgumentParser):
    """On a bad argument, print just the error and the --help tip, not the ~60-line usage block above them."""

    def print_usage(self, file: Any = None) -> None:
        pass

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """One line, also for a YAML syntax error (whose message spans several)."""
        super().error(" ".join(str(message).split()), ex)


class KeepConfigCallback(SaveConfigCallback):
    """Never rewrites a run's config.yaml: a resumed fit records its own config beside it."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if trainer.log_dir and (Path(trainer.log_dir) / self.config_filename).exists():
            self.config_filename = f"config.resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
        super().setup(trainer, pl_module, stage)


class ReviewClassifierCLI(LightningCLI):
    """The LightningCLI of this project; `src.pretrain.PretrainCLI` subclasses it (other links and best metric)."""

    best_metric = ("val/acc", "max")  # the best checkpoint's monitor and mode
    default_configs: tuple[Path, ...] = (DEFAULTS,)  # read first by every command, in this order

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        defaults = {"default_config_files": [str(path) for path in self.default_configs]}
        run = kwargs.get("run", True)  # run=False: one parser, no subcommands
        kwargs.setdefault("parser_kwargs", dict.fromkeys(self.subcommands(), defaults) if run else defaults)
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("parser_class", QuietUsageParser)
        kwargs.setdefault("save_config_callback", KeepConfigCallback)
        _quiet_lightning()
        self.new_run_dir: Path | None = None  # made by this command; removed again if it fails on bad input
        claimed_before = os.environ.get(CLAIMED_RUN)
        try:
            super().__init__(*args, **kwargs)
        except UserInputError:
            if self.new_run_dir is not None and not any(self.new_run_dir.glob("checkpoints/*.ckpt")):
                shutil.rmtree(self.new_run_dir, ignore_errors=True)
            raise
        finally:  # the next command in this process claims its own run
            if claimed_before is None:
                os.environ.pop(CLAIMED_RUN, None)

    def link_model_and_data(self, parser: LightningArgumentParser) -> None:
        """Values given once: the tokenizer is the model's, the model's classes are the data's, one seed."""
        parser.link_arguments("model.model_name_or_path", "data.tokenizer_name_or_path")
        parser.link_arguments("data.num_labels", "model.num_labels")
        parser.link_arguments("seed_everything", "data.seed")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self.link_model_and_data(parser)
        # named sections, in this order: last.ckpt must be written after the best checkpoint is chosen
        metric, mode = self.best_metric
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": metric,
            "checkpoint.mode": mode,
            "checkpoint.filename": f"epoch{{epoch}}-step{{step}}-{metric.replace('/', '_')}{{{metric}:.4f}}",
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.enable_version_counter": False,
        })
        parser.add_lightning_class_args(LastCheckpoint, "periodic_checkpoint")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="fit: afterwards, test the best checkpoint on the test split")
        parser.add_argument("--export_best", type=bool, default=False,
                            help="fit: afterwards, export the best checkpoint as a HF model to RUN_DIR/hf_model")

    def _parse_ckpt_path(self) -> None:
        """No-op (overrides a private LightningCLI hook; Lightning PR #21455). Lightning would replace the config
        with the hyperparameters stored in an explicit `--ckpt_path` file, silently ignoring the config and command
        line. Here the config decides; `after_instantiate_classes` refuses a checkpoint that does not fit."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand
        trainer = config.trainer
        trainer.callbacks = _one_progress_bar(trainer.get("callbacks") or [], trainer.get("enable_progress_bar"))
        if self.subcommand == "fit":
            for key in ("max_epochs", "max_steps"):
                if trainer.get(key) == 0 or (trainer.get(key) or -1) < -1:
                    raise UserInputError(f"trainer.{key}={trainer.get(key)} trains nothing: set it to 1 or more "
                                         "(or -1 for no limit)")
        logger = trainer.get("logger")
        logger_args = logger.init_args if logger not in (None, True, False) and "init_args" in logger else None
        ckpt_path = config.get("ckpt_path")
        if ckpt_path in ("last", "best"):
            if logger_args is None or "save_dir" not in logger_args:
                raise UserInputError(f"--ckpt_path {ckpt_path} finds runs through the logger's save_dir/name: set "
                                     "a logger (the default TensorBoard one) or pass a checkpoint file")
            config.ckpt_path = str(newest_run_checkpoint(Path(logger_args.save_dir), logger_args.name, ckpt_path))
            print(f"--ckpt_path {ckpt_path}: {config.ckpt_path}")
        elif ckpt_path and not Path(ckpt_path).is_file():
            raise UserInputError(f"checkpoint '{ckpt_path}' does not exist: pass a .ckpt file, 'last' or 'best'")
        run_dir = run_dir_of(Path(config.ckpt_path)) if config.get("ckpt_path") else None
        run_layout = logger_args is not None and {"save_dir", "name", "version"} <= set(vars(logger_args))
        if run_dir is not None and run_layout:
            if self.subcommand == "fit":  # keep writing into the checkpoint's run directory
                number = VERSION.fullmatch(run_dir.name)
                logger_args.save_dir, logger_args.name = str(run_dir.parent.parent), run_dir.parent.name
                logger_args.version = int(number.group(1)) if number else run_dir.name
            else:  # an eval run of its own, beside the training run's files
                logger_args.save_dir, logger_args.name = str(run_dir), "eval"
                logger_args.version = eval_version(run_dir, self.subcommand)
        if logger_args is not None and "save_dir" in logger_args:
            _check_writable(Path(logger_args.save_dir))
            if self.subcommand == "fit" and run_layout and logger_args.version is None and not trainer.fast_dev_run:
                logger_args.version = self._claim_run(Path(logger_args.save_dir), logger_args.name)

    def _claim_run(self, log_root: Path, experiment: str) -> int | None:
        """A new fit's run directory, made before anything is written. Processes that Lightning starts for the
        other DDP ranks inherit the claimed number; external launchers (torchrun, SLURM) let Lightning choose."""
        if CLAIMED_RUN in os.environ:
            return int(os.environ[CLAIMED_RUN])
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return None
        number = claim_new_run(log_root, experiment)
        os.environ[CLAIMED_RUN] = str(number)
        self.new_run_dir = log_root / experiment / f"version_{number}"
        return number

    def after_instantiate_classes(self) -> None:
        # before anything runs or is written (config.yaml, events): a checkpoint of another model fails here
        ckpt_path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        if ckpt_path:
            self.model.check_checkpoint_fits(load_checkpoint(ckpt_path))
        log_dir = self.trainer.log_dir if self.subcommand else None  # before DDP starts: no collective yet
        if log_dir and not Path(log_dir).exists():  # an eval run's directory
            self.new_run_dir = Path(log_dir)

    def after_fit(self) -> None:
        trainer = self.trainer
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if self.config.fit.test_after_fit:  # fast_dev_run saves no checkpoint: then the weights in memory
            trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        exported = None
        if self.config.fit.export_best and trainer.is_global_zero and best and log_dir:
            exported = export_checkpoint(best, Path(log_dir) / "hf_model")
            print(f"Exported the best checkpoint to {exported}")
        if trainer.fast_dev_run:
            return  # nothing was saved or logged
        print_run_summary(trainer, export_path=exported, log_dir=log_dir)
        if trainer.is_global_zero and log_dir:
            print(f"\nRun directory: {log_dir}\nView it: tensorboard --logdir {Path(log_dir).parent.parent}")


def _one_progress_bar(callbacks: list[Any], enabled: bool | None) -> list[Any]:
    """The last progress bar listed wins (a preset such as configs/progress/rich.yaml appends one to the defaults'
    tqdm bar); `--trainer.enable_progress_bar false` drops them all."""
    def is_bar(callback: Any) -> bool:
        module, _, name = callback.class_path.rpartition(".")
        return issubclass(getattr(importlib.import_module(module), name), ProgressBar)

    bars = [i for i, callback in enumerate(callbacks) if is_bar(callback)]
    keep = bars[-1:] if enabled is not False else []
    return [callback for i, callback in enumerate(callbacks) if i not in bars or i in keep]


def _check_writable(directory: Path) -> None:
    """Fail before loading the model when runs cannot be written (read-only disk, a file in the way)."""
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        raise UserInputError(f"logger save_dir '{directory}': '{existing}' is a file, not a directory: "
                             "pass another --trainer.logger.init_args.save_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"logger save_dir '{directory}' cannot be written ('{existing}' is read-only for "
                             "you): pass a writable --trainer.logger.init_args.save_dir")


class _DropNoise(logging.Filter):
    """Lines a user cannot act on: Lightning's litlogger advert, its note that our model summary replaces its own,
    and the summary's `Total Flops` (0: nothing is measured before training)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "litlogger" in message or "already configured with model summary" in message:
            return False
        if "total flops" in message.lower():
            lines = [line for line in message.splitlines() if "total flops" not in line.lower()]
            record.msg, record.args = "\n".join(lines), ()
        return True


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.callbacks.model_summary"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # torch deprecation inside Lightning's _pytree
    # EvalBatchSampler yields every row exactly once (tested), which Lightning cannot know of a custom sampler
    warnings.filterwarnings("ignore", message="You are using a custom batch sampler")


def main(args: list[str] | None = None) -> None:
    run(ReviewClassifierCLI, SequenceClassifier, TextClassificationDataModule, args)


def run(cli_class: type[ReviewClassifierCLI], model_class: type, datamodule_class: type,
        args: list[str] | None = None) -> None:
    """Run a CLI of this project: quiet logs, the default config files, one `error:` line for bad input."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the data module parallelises tokenization itself
    logging.getLogger("transformers").setLevel(logging.ERROR)  # load reports a user cannot act on
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs for fp32 runs; no effect on CPU
    try:
        cli_class(model_class, datamodule_class, args=args)
    except (UserInputError, NonFiniteLossError) as err:
        sys.exit(f"error: {err}")
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        sys.exit(f"error: could not write {err.filename or 'a run file'}: {err.strerror}. Free space (or pick "
                 "another --trainer.logger.init_args.save_dir) and resume with --ckpt_path last: checkpoints are "
                 "written whole or not at all, so the last one on disk is intact")


if __name__ == "__main__":
    main()
