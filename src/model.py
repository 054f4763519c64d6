"""`SequenceClassifier`: a Hugging Face sequence classifier, its loss and metrics, its optimizer and schedule.

Optimizer and schedule come from the config: `model.optimizer` (any `torch.optim` class with its arguments, default
fused AdamW) and `model.scheduler` (a `transformers.get_scheduler` name, default linear with optional warmup).
Recipes (configs/recipes/): `model.layer_lr_decay` (layer-wise learning rates, `src/optim.py`) and `model.peft: lora`
(low-rank adapters, `src/lora.py`).
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
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from src import lora
from src.optim import check_layer_lr_decay, check_schedule, configure_optimization, parameter_groups
from src.utils.checkpoint_io import check_checkpoint_fits
from src.utils.errors import UserInputError
from src.utils.pretrained import load_pretrained

LABEL_KEYS = ("labels", "idx", "length")


def star_label_names(num_labels: int) -> list[str]:
    """'1 star', '2 stars', ... — the meaning of yelp_review_full's labels 0..4."""
    return [f"{i} star" if i == 1 else f"{i} stars" for i in range(1, num_labels + 1)]


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """The tutorial's optimizer: AdamW, lr 5e-5; fused kernels (several times faster steps on CUDA and CPU)."""
    return torch.optim.AdamW(params, lr=5e-5, fused=True)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; raised before the bad step is applied, so checkpoints stay good."""


def compile_in_place(model: torch.nn.Module) -> None:
    """`torch.compile` the module in place, so checkpoints keep the plain parameter names; once, however often
    Lightning calls `configure_model` (fit, then test after fit)."""
    if getattr(model, "_compiled_call_impl", None) is None:
        model.compile()


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
        layer_lr_decay: layer-wise learning-rate decay in (0, 1]: the head learns at the optimizer's lr, each encoder
            layer below at the one above's times this, the embeddings last (`src/optim.py`). None: one lr.
        peft: "lora" trains low-rank adapters and the head instead of all weights (`src/lora.py`); checkpoints then
            hold only those. lora_r / lora_alpha / lora_dropout: the adapters' rank, scale (alpha / r) and dropout;
            lora_target_modules: the linear layers to adapt (default per architecture: query and value).
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
        layer_lr_decay: float | None = None,
        peft: str | None = None,
        lora_r: int = 8,
        lora_alpha: float = 16,
        lora_dropout: float = 0.1,
        lora_target_modules: list[str] | None = None,
    ) -> None:
        super().__init__()
        label_names = label_names or star_label_names(num_labels)
        if len(label_names) != num_labels:
            raise UserInputError(f"model.label_names has {len(label_names)} names but num_labels={num_labels}")
        check_schedule(scheduler, warmup_steps, warmup_ratio)
        check_layer_lr_decay(layer_lr_decay)
        lora.check_lora_args(peft, lora_r, lora_alpha, lora_dropout)
        self.save_hyperparameters(ignore=["optimizer"])  # config.yaml records it; a callable does not pickle safely
        self.hparams["label_names"] = label_names  # the resolved names, for callbacks and exports
        self.optimizer = optimizer
        model, loading = load_pretrained(
            AutoModelForSequenceClassification.from_pretrained,
            model_name_or_path,
            num_labels=num_labels,
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            attn_implementation=attn_implementation,
            ignore_mismatched_sizes=True,  # a head trained for other labels is re-initialized for these
            output_loading_info=True,
        )
        if layer_lr_decay is not None:
            parameter_groups(model, layer_lr_decay)  # an architecture it cannot place fails now, not after setup
        self.base_fingerprint: float | None = None
        if peft == "lora":
            newly_initialized = set(loading["missing_keys"]) | {key for key, *_ in loading["mismatched_keys"]}
            model = lora.add_lora(model, lora_r, lora_alpha, lora_dropout, lora_target_modules, newly_initialized)
            self.base_fingerprint = lora.base_fingerprint(model)
        self.model = model
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
        """Refuse, in one line, a checkpoint whose weights do not fit this model (another model, num_labels or
        adapters), or whose LoRA adapters were trained on other base weights than `model_name_or_path` holds now."""
        check_checkpoint_fits(self, checkpoint, ("model_name_or_path", "num_labels", "peft", "lora_r",
                                                 "lora_target_modules"))
        trained_on = checkpoint.get("lora_base_fingerprint")
        if self.base_fingerprint is not None and trained_on is not None and \
                not math.isclose(trained_on, self.base_fingerprint, rel_tol=1e-9):
            raise UserInputError(
                f"the checkpoint's LoRA adapters were trained on other base weights than "
                f"'{self.hparams.model_name_or_path}' holds now (it changed since): point --model.model_name_or_path "
                "at the base model the run used"
            )

    # ----- LoRA checkpoints: trainable weights only; the frozen ones come from model_name_or_path ---------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        if self.hparams.peft is not None:
            prefix = kwargs.get("prefix", "")
            for name in lora.frozen_names(self):
                state.pop(prefix + name, None)
        return state

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        if self.hparams.peft is None:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = lora.frozen_names(self)
        result.missing_keys[:] = [key for key in result.missing_keys if key not in frozen]
        if strict and (result.missing_keys or result.unexpected_keys):
            raise RuntimeError(f"LoRA checkpoint does not fit: missing {result.missing_keys[:5]}, unexpected "
                               f"{result.unexpected_keys[:5]}")
        return result

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.base_fingerprint is not None:
            checkpoint["lora_base_fingerprint"] = self.base_fingerprint

    def merged_model(self) -> PreTrainedModel:
        """The plain Hugging Face model, LoRA adapters folded into its weights (for export; changes this module)."""
        return lora.merged(self.model)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint_fits(checkpoint)  # before Lightning's load_state_dict, whose error dumps every shape

    def configure_model(self) -> None:
        if self.hparams.compile:
            compile_in_place(self.model)

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
                "Lower --model.optimizer.lr, add warmup, or use bf16-mixed instead of 16-mixed"
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
        """Trainable parameters in named groups (names label the learning-rate curves; `src/optim.py`)."""
        model = self.model.get_base_model() if self.hparams.peft is not None else self.model
        return parameter_groups(model, self.hparams.layer_lr_decay)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return configure_optimization(self, self.optimizer, self.parameter_groups(), hp.scheduler,
                                      hp.scheduler_kwargs, hp.warmup_steps, hp.warmup_ratio)
