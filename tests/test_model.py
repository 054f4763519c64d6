"""SequenceClassifier: labels in the HF config, optimizer groups, the warmup/decay schedule, steps."""

import math
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.optim.lr_scheduler import LRScheduler

from src.model import NonFiniteLossError, SequenceClassifier, compile_in_place
from src.utils.errors import UserInputError


def adamw(lr: float = 5e-5, weight_decay: float = 0.0) -> partial:
    """What `--model.optimizer torch.optim.AdamW --model.optimizer.lr LR` gives the module."""
    return partial(torch.optim.AdamW, lr=lr, weight_decay=weight_decay)


def scheduled(model: SequenceClassifier, max_steps: int) -> tuple[torch.optim.Optimizer, LRScheduler]:
    """configure_optimizers() as the Trainer calls it, for a run of `max_steps` optimizer steps."""
    model.trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, accelerator="cpu")
    config = model.configure_optimizers()
    return config["optimizer"], config["lr_scheduler"]["scheduler"]


def lr_trace(optimizer: torch.optim.Optimizer, scheduler: LRScheduler, steps: int) -> list[float]:
    """The learning rate before each of `steps` optimizer steps, and after the last."""
    trace = []
    for _ in range(steps):
        trace.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return [*trace, optimizer.param_groups[0]["lr"]]


def test_label_names_are_stored_in_the_hf_config(tiny_bert: Path) -> None:
    model = SequenceClassifier(str(tiny_bert))
    assert model.model.config.id2label == {0: "1 star", 1: "2 stars", 2: "3 stars", 3: "4 stars", 4: "5 stars"}
    assert model.model.config.label2id["5 stars"] == 4
    custom = SequenceClassifier(str(tiny_bert), num_labels=2, label_names=["negative", "positive"])
    assert custom.model.config.id2label == {0: "negative", 1: "positive"}
    assert custom.model.classifier.out_features == 2


def test_bad_model_arguments_are_user_errors(tiny_bert: Path) -> None:
    with pytest.raises(UserInputError, match="label_names has 2 names but num_labels=5"):
        SequenceClassifier(str(tiny_bert), label_names=["a", "b"])
    with pytest.raises(UserInputError, match="not both"):
        SequenceClassifier(str(tiny_bert), warmup_steps=3, warmup_ratio=0.1)
    with pytest.raises(UserInputError, match=r"model\.scheduler='cosin' is not a schedule: use one of linear, cosine"):
        SequenceClassifier(str(tiny_bert), scheduler="cosin")


def test_negative_learning_rate_is_a_user_error(tiny_bert: Path) -> None:
    with pytest.raises(UserInputError, match=r"model.optimizer: .*-0.0001.*positive learning rate"):
        scheduled(SequenceClassifier(str(tiny_bert), optimizer=adamw(-1e-4)), 10)


def test_any_torch_optimizer_from_config(tiny_bert: Path) -> None:
    sgd = partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    optimizer, scheduler = scheduled(SequenceClassifier(str(tiny_bert), optimizer=sgd), 10)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert lr_trace(optimizer, scheduler, 10)[0] == pytest.approx(0.1)


def test_cosine_schedule_by_name(tiny_bert: Path) -> None:
    model = SequenceClassifier(str(tiny_bert), optimizer=adamw(1e-4), scheduler="cosine", warmup_steps=2)
    trace = lr_trace(*scheduled(model, 10), 10)
    assert trace[1] == pytest.approx(0.5e-4)  # warmup
    progress = [(step - 2) / 8 for step in range(2, 11)]  # cosine from the peak to 0 over the remaining 8 steps
    assert trace[2:] == pytest.approx([1e-4 * 0.5 * (1 + math.cos(math.pi * p)) for p in progress], abs=1e-12)


def test_trains_in_train_mode_with_sdpa_attention(tiny_bert: Path) -> None:
    model = SequenceClassifier(str(tiny_bert))
    assert model.model.training  # from_pretrained returns eval mode; dropout must be on for fine-tuning
    assert model.model.config._attn_implementation == "sdpa"


def test_no_weight_decay_on_biases_and_layernorm(tiny_bert: Path) -> None:
    model = SequenceClassifier(str(tiny_bert), optimizer=adamw(weight_decay=0.01))
    optimizer, _ = scheduled(model, 10)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert (decayed["name"], plain["name"]) == ("decay", "no_decay")  # the learning-rate curves' names
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert plain_names == {n for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert all("LayerNorm" not in names[id(p)] and not names[id(p)].endswith("bias") for p in decayed["params"])


def test_linear_schedule_without_warmup_is_the_tutorials(tiny_bert: Path) -> None:
    optimizer, scheduler = scheduled(SequenceClassifier(str(tiny_bert), optimizer=adamw(5e-5)), 10)
    trace = lr_trace(optimizer, scheduler, 10)
    assert trace[0] == pytest.approx(5e-5)
    assert trace[5] == pytest.approx(2.5e-5)
    assert trace[-1] == pytest.approx(0.0)


@pytest.mark.parametrize("warmup", [{"warmup_steps": 4}, {"warmup_ratio": 0.2}])
def test_warmup_then_linear_decay(tiny_bert: Path, warmup: dict) -> None:
    optimizer, scheduler = scheduled(SequenceClassifier(str(tiny_bert), optimizer=adamw(1e-4), **warmup), 20)
    trace = lr_trace(optimizer, scheduler, 20)
    assert trace[0] == pytest.approx(0.0)
    assert trace[2] == pytest.approx(0.5e-4)
    assert max(trace) == pytest.approx(1e-4) and trace.index(max(trace)) == 4
    assert trace[12] == pytest.approx(1e-4 * 8 / 16)
    assert trace[-1] == pytest.approx(0.0)


def batch(n: int = 4, length: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(5, 20, (n, length), generator=generator),
            "attention_mask": torch.ones(n, length, dtype=torch.long),
            "labels": torch.arange(n) % 5, "idx": torch.arange(n), "length": torch.full((n,), length)}


def test_predict_step_returns_ids_labels_and_probabilities(tiny_bert: Path) -> None:
    model = SequenceClassifier(str(tiny_bert)).eval()
    with torch.no_grad():
        out = model.predict_step(batch(), 0)
    assert torch.equal(out["idx"], torch.arange(4))
    assert torch.allclose(out["probs"].sum(-1), torch.ones(4))
    assert torch.equal(out["label"], out["probs"].argmax(-1))


def test_non_finite_loss_raises_before_the_step(tiny_bert: Path) -> None:
    model = SequenceClassifier(str(tiny_bert))
    model.trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, accelerator="cpu")
    with torch.no_grad():
        model.model.classifier.bias.fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match="training loss became nan at global step 0"):
        model.training_step(batch(), 0)


def test_compile_in_place_compiles_once_and_keeps_parameter_names() -> None:
    layer = torch.nn.Linear(2, 2)
    compile_in_place(layer)
    compiled = layer._compiled_call_impl
    compile_in_place(layer)  # configure_model runs again for test after fit
    assert compiled is not None and layer._compiled_call_impl is compiled
    assert list(layer.state_dict()) == ["weight", "bias"]
