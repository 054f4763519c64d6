"""`SequenceClassifier`: a Hugging Face sequence classifier, its loss and metrics, its optimizer and schedule.

Optimizer and schedule come from the config: `model.optimizer` (any `torch.optim` class with its arguments, default
fused AdamW) and `model.scheduler` (a `transformers.get_scheduler` name, default linear with optional warmup).
"""

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import ClasswiseWrapper, MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from transformers import AutoModelForSequenceClassification, SchedulerType, get_scheduler

from src.utils.errors import UserInputError
from src.utils.pretrained import load_pretrained

LABEL_KEYS = ("labels", "idx", "length")
SCHEDULERS = tuple(s.value for s in SchedulerType if s.value != "reduce_lr_on_plateau")  # step-wise schedules


def star_label_names(num_labels: int) -> list[str]:
    """'1 star', '2 stars', ... — the meaning of yelp_review_full's labels 0..4."""
    return [f"{i} star" if i == 1 else f"{i} stars" for i in range(1, num_labels + 1)]


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """The tutorial's optimizer: AdamW, lr 5e-5; fused kernels (several times faster steps on CUDA and CPU)."""
    return torch.optim.AdamW(params, lr=5e-5, fused=True)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; raised before the bad step is applied, so checkpoints stay good."""


class SequenceClassifier(pl.LightningModule):
    """Fine-tunes `AutoModelForSequenceClassification` on `num_labels` classes.

    Args:
        model_name_or_path: hub id, local dir, or `package:MODULE` (see `src.utils.pretrained`).
        num_labels: set from `data.num_labels` by the CLI.
        label_names: class names stored in the HF config (`id2label`); default "1 star".."N stars".
        optimizer: called with the parameter groups; its `lr` and `weight_decay` are the run's. Biases and LayerNorm
            weights (all 1-D parameters) get no weight decay.
        scheduler: a `transformers.get_scheduler` name (linear, cosine, constant_with_warmup, ...), stepped every
            optimizer step; `scheduler_kwargs` go to it (e.g. `num_cycles` for cosine_with_restarts).
        warmup_steps / warmup_ratio: warmup length (give one), then the schedule's decay to the last step.
        attn_implementation: None lets transformers pick SDPA (fused attention kernels) where the model supports
            it, else eager; or force "sdpa", "eager", "flash_attention_2".
        compile: wrap the HF model in `torch.compile`.
    """

    def __init__(
        self,
        model_name_or_path: str = "google-bert/bert-base-cased",
        num_labels: int = 5,
        label_names: list[str] | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: str = "linear",
        scheduler_kwargs: dict[str, Any] | None = None,
        warmup_steps: int = 0,
        warmup_ratio: float = 0.0,
        attn_implementation: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        label_names = label_names or star_label_names(num_labels)
        if len(label_names) != num_labels:
            raise UserInputError(f"model.label_names has {len(label_names)} names but num_labels={num_labels}")
        if warmup_steps and warmup_ratio:
            raise UserInputError("set model.warmup_steps or model.warmup_ratio, not both")
        if warmup_steps < 0 or not 0 <= warmup_ratio < 1:
            raise UserInputError(f"model.warmup_steps={warmup_steps} must be >= 0 and model.warmup_ratio="
                                 f"{warmup_ratio} in [0, 1)")
        if scheduler not in SCHEDULERS:
            raise UserInputError(f"model.scheduler={scheduler!r} is not a schedule: use one of {', '.join(SCHEDULERS)}")
        self.save_hyperparameters(ignore=["optimizer"])  # config.yaml records it; a callable does not pickle safely
        self.hparams["label_names"] = label_names  # the resolved names, for callbacks and exports
        self.optimizer = optimizer
        self.model = load_pretrained(
            AutoModelForSequenceClassification.from_pretrained,
            model_name_or_path,
            num_labels=num_labels,
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            attn_implementation=attn_implementation,
            ignore_mismatched_sizes=True,  # a head trained for other labels is re-initialized for these
        )
        self.model.train()  # from_pretrained returns eval mode (dropout off); Lightning keeps a module's mode
        self.train_metrics = self._metrics("train/", label_names, per_class=False)
        self.val_metrics = self._metrics("val/", label_names)
        self.test_metrics = self._metrics("test/", label_names)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps its best score

    @staticmethod
    def _metrics(prefix: str, names: list[str], per_class: bool = True) -> MetricCollection:
        n = len(names)
        metrics: dict[str, Any] = {
            "acc": MulticlassAccuracy(n, average="micro"),
            "f1_macro": MulticlassF1Score(n, average="macro"),
        }
        if per_class:  # logged as <stage>/precision/<label name>, <stage>/recall/<label name>
            metrics["precision"] = ClasswiseWrapper(MulticlassPrecision(n, average=None), names, prefix="precision/")
            metrics["recall"] = ClasswiseWrapper(MulticlassRecall(n, average=None), names, prefix="recall/")
        # compute_groups off: the wrapped per-class metrics would share state without seeing updates (a warning)
        return MetricCollection(metrics, prefix=prefix, compute_groups=False)

    def check_checkpoint_fits(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, in one line, a checkpoint whose weights do not fit this model (another model or num_labels)."""
        own, saved = self.state_dict(), checkpoint.get("state_dict", {})
        misfits = sorted(key for key in own.keys() | saved.keys()
                         if key not in own or key not in saved or own[key].shape != saved[key].shape)
        if not misfits:
            return
        trained = checkpoint.get("hyper_parameters", {})
        differences = [f"{key}={trained[key]!r} (this run: {self.hparams[key]!r})"
                       for key in ("model_name_or_path", "num_labels")
                       if key in trained and trained[key] != self.hparams[key]]
        what = ", ".join(differences) or f"weights of other shapes ({len(misfits)} tensors, e.g. {misfits[0]})"
        raise UserInputError(
            f"the checkpoint was trained with {what}: it does not fit this model. Use the checkpoint's settings "
            "(config.yaml in its run directory), or drop --ckpt_path to start a new run"
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint_fits(checkpoint)  # before Lightning's load_state_dict, whose error dumps every shape

    def configure_model(self) -> None:
        if self.hparams.compile and getattr(self.model, "_compiled_call_impl", None) is None:
            self.model.compile()  # in place, so checkpoints keep the plain parameter names

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits for a tokenized batch (extra keys such as labels are ignored)."""
        inputs = {key: value for key, value in batch.items() if key not in LABEL_KEYS}
        return self.model(**inputs).logits

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.float(), labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = self._loss(logits, batch["labels"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at global step {self.global_step} (batch {batch_idx}): "
                "the run stopped before applying it; the checkpoints on disk are from before. "
                "Lower model.lr, add warmup, or use bf16-mixed instead of 16-mixed"
            )
        self.train_metrics.update(logits, batch["labels"])
        batch_size = len(batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # log accuracy every `log_every_n_steps` only: computing it forces a device sync
        if (self.global_step % self.trainer.log_every_n_steps) == 0:
            metrics = self.train_metrics.compute()
            self.log("train/acc", metrics.pop("train/acc"), prog_bar=True)
            self.log_dict(metrics)
            self.train_metrics.reset()

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        """Returns predictions and labels, for callbacks that report on them (confusion matrices)."""
        logits = self(batch)
        labels = batch["labels"]
        getattr(self, f"{stage}_loss").update(self._loss(logits, labels), weight=len(labels))
        getattr(self, f"{stage}_metrics").update(logits, labels)
        return {"preds": logits.argmax(dim=-1), "labels": labels}

    def _log_eval_epoch(self, stage: str) -> None:
        """Log exact epoch metrics: torchmetrics syncs the states across ranks, each example counted once."""
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss").compute(), prog_bar=stage == "val")
        metrics = getattr(self, f"{stage}_metrics").compute()
        self.log(f"{stage}/acc", metrics.pop(f"{stage}/acc"), prog_bar=True)
        self.log_dict(metrics)
        if stage == "val" and not self.trainer.sanity_checking:
            self.val_acc_best.update(self.trainer.callback_metrics["val/acc"])
            self.log("val/acc_best", self.val_acc_best.compute())
        getattr(self, f"{stage}_loss").reset()
        getattr(self, f"{stage}_metrics").reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_eval_epoch("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_eval_epoch("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self(batch).float().softmax(dim=-1)
        return {"idx": batch["idx"], "label": probs.argmax(dim=-1), "probs": probs}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in named groups (names label the learning-rate curves); 1-D ones get no decay."""
        params = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        return [
            {"name": "decay", "params": [p for _, p in params if p.ndim >= 2]},
            {"name": "no_decay", "params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        try:
            optimizer = self.optimizer(self.parameter_groups())
        except ValueError as err:  # torch checks its arguments: "Invalid learning rate: -0.0001"
            raise UserInputError(f"model.optimizer: {err}: use a positive learning rate (--model.optimizer.lr) "
                                 "and weight decay") from None
        total_steps = int(self.trainer.estimated_stepping_batches)
        hp = self.hparams
        warmup = hp.warmup_steps or math.ceil(hp.warmup_ratio * total_steps)
        scheduler = get_scheduler(hp.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                                  scheduler_specific_kwargs=hp.scheduler_kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
