"""Parameter groups (weight decay, layer-wise learning-rate decay) and the optimizer + schedule built from them.

Layer-wise learning-rate decay (LLRD; Howard & Ruder 2018, Sun et al. 2019 "How to Fine-Tune BERT for Text
Classification?"): with `layer_lr_decay` d and L encoder layers, the classifier head (and a pooler or final norm
above the last layer) learns at `lr`, encoder layer l (0-based, as HF numbers them) at `lr * d**(L - l)` and the
embeddings at `lr * d**(L + 1)`. Each group carries an `lr_scale`; `configure_optimization` multiplies the group's
lr by it after the optimizer is built, so `model.optimizer.lr` stays the run's one learning rate and the schedule
(a LambdaLR) scales every group from its own initial lr. Group names label the TensorBoard learning-rate curves
(`lr-AdamW/layer05`, `lr-AdamW/head_no_decay`, ...). 1-D parameters (biases, norms) get no weight decay.
"""

import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from transformers import PreTrainedModel, SchedulerType, get_scheduler

from src.utils.architectures import architecture_of, depth_of
from src.utils.errors import UserInputError

SCHEDULERS = tuple(s.value for s in SchedulerType if s.value != "reduce_lr_on_plateau")  # step-wise schedules


def check_schedule(scheduler: str, warmup_steps: int, warmup_ratio: float) -> None:
    """Refuse schedule settings that would silently train with another schedule than asked."""
    if warmup_steps and warmup_ratio:
        raise UserInputError("set model.warmup_steps or model.warmup_ratio, not both")
    if warmup_steps < 0 or not 0 <= warmup_ratio < 1:
        raise UserInputError(f"model.warmup_steps={warmup_steps} must be >= 0 and model.warmup_ratio="
                             f"{warmup_ratio} in [0, 1)")
    if scheduler not in SCHEDULERS:
        raise UserInputError(f"model.scheduler={scheduler!r} is not a schedule: use one of {', '.join(SCHEDULERS)}")


def check_layer_lr_decay(decay: float | None) -> None:
    if decay is not None and not 0 < decay <= 1:
        raise UserInputError(f"model.layer_lr_decay={decay} must be in (0, 1]: each layer down learns at the one "
                             "above's lr times it (Sun et al. use 0.95; 1 is no decay), or leave it unset")


def _split_by_decay(name: str, params: list[tuple[str, nn.Parameter]], lr_scale: float = 1.0) -> list[dict]:
    """A group with weight decay (>= 2-D) and one without (1-D), named `<name>` and `<name>_no_decay`."""
    decay, no_decay = ("decay", "no_decay") if name == "" else (name, f"{name}_no_decay")
    groups = [
        {"name": decay, "params": [p for _, p in params if p.ndim >= 2], "lr_scale": lr_scale},
        {"name": no_decay, "params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0,
         "lr_scale": lr_scale},
    ]
    return [group for group in groups if group["params"]]


def parameter_groups(model: PreTrainedModel, layer_lr_decay: float | None = None) -> list[dict[str, Any]]:
    """The trainable parameters of a HF model in named groups: `decay` / `no_decay`, or with `layer_lr_decay`
    two per depth (`head`, `layer<L-1>` .. `layer00`, `embeddings`), each with its `lr_scale`.

    Under PEFT pass `get_base_model()`: its names are the plain model's. Raises a one-line error for an
    architecture `src/utils/architectures.py` does not know, or a parameter it cannot place.
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if layer_lr_decay is None:
        return _split_by_decay("", trainable)
    check_layer_lr_decay(layer_lr_decay)
    arch = architecture_of(model.config, "model.layer_lr_decay")
    num_layers = model.config.num_hidden_layers
    by_depth: dict[int, list[tuple[str, nn.Parameter]]] = {}
    for name, p in trainable:
        depth = depth_of(name, arch, num_layers)
        if depth is None or depth > num_layers + 1:
            raise UserInputError(f"model.layer_lr_decay: parameter '{name}' of model_type '{model.config.model_type}'"
                                 f" is not in its embeddings, its {num_layers} layers or its head: fix its entry in "
                                 "src/utils/architectures.py")
        by_depth.setdefault(depth, []).append((name, p))
    groups = []
    for depth in sorted(by_depth, reverse=True):  # head first, as the curves are read top-down
        name = "head" if depth == num_layers + 1 else "embeddings" if depth == 0 else f"layer{depth - 1:02d}"
        groups += _split_by_decay(name, by_depth[depth], lr_scale=layer_lr_decay ** (num_layers + 1 - depth))
    return groups


def configure_optimization(module: pl.LightningModule, optimizer_factory: Callable[[Iterable], torch.optim.Optimizer],
                           groups: list[dict[str, Any]], scheduler: str, scheduler_kwargs: dict[str, Any] | None,
                           warmup_steps: int, warmup_ratio: float) -> dict[str, Any]:
    """`configure_optimizers`' result: the configured optimizer over `groups` (each lr times its `lr_scale`) and a
    `transformers.get_scheduler` schedule stepped every optimizer step, its length from the trainer."""
    try:
        optimizer = optimizer_factory(groups)
    except ValueError as err:  # torch checks its arguments: "Invalid learning rate: -0.0001"
        raise UserInputError(f"model.optimizer: {err}: use a positive learning rate (--model.optimizer.lr) "
                             "and weight decay") from None
    for group in optimizer.param_groups:  # before the schedule records each group's initial lr
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
    total_steps = int(module.trainer.estimated_stepping_batches)
    warmup = warmup_steps or math.ceil(warmup_ratio * total_steps)
    schedule = get_scheduler(scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                             scheduler_specific_kwargs=scheduler_kwargs)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
