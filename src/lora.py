"""LoRA (Hu et al. 2021) through `peft`: low-rank adapters on the attention projections, the head trained in full.

`--model.peft lora` wraps the classifier in a `peft` model: the pretrained weights are frozen, each target linear
layer W gets a trainable update (alpha / r) B A with rank r, and the classification head (the modules
`AutoModelForSequenceClassification` adds, the pooler or final norm between them and the last layer, and anything
else `from_pretrained` had to initialize) is trained in full. Targets default per architecture
(`src/utils/architectures.py`; query and value projections) and can be named with `--model.lora_target_modules`.

Checkpoints keep only the trainable weights (adapters and head) and the frozen weights' fingerprint: the frozen
ones are the pretrained model's, reloaded from `model_name_or_path` when a checkpoint is restored, and the
fingerprint refuses a checkpoint whose base model has changed since. `merged()` folds the adapters into the base
weights for export, giving a plain Hugging Face model.
"""

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedModel

from src.utils.architectures import architecture_of
from src.utils.errors import UserInputError

PEFT_METHODS = ("lora",)


def check_lora_args(peft: str | None, r: int, alpha: float, dropout: float) -> None:
    if peft is not None and peft not in PEFT_METHODS:
        raise UserInputError(f"model.peft={peft!r} is not a PEFT method here: use one of {', '.join(PEFT_METHODS)}, "
                             "or leave it unset for full fine-tuning")
    if r < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise UserInputError(f"model.lora_r={r} must be >= 1, model.lora_alpha={alpha} > 0 and "
                             f"model.lora_dropout={dropout} in [0, 1)")


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    """Each target must name at least one linear layer (peft would skip a misspelt one without a word)."""
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    missing = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in linear)]
    if missing:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise UserInputError(
            f"model.lora_target_modules: {missing} match no linear layer of this {model.config.model_type} model: "
            f"use names from {leaves}"
        )


def add_lora(model: PreTrainedModel, r: int, alpha: float, dropout: float, target_modules: list[str] | None,
             newly_initialized: set[str]) -> nn.Module:
    """Wrap `model` with LoRA adapters; the head and the modules holding `newly_initialized` parameters (names
    from `from_pretrained`'s loading info: weights it had to create) are trained in full."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise UserInputError("model.peft=lora needs the peft package: run `pip install -e '.[recipes]'`") from None
    arch = architecture_of(model.config, "model.peft=lora")
    targets = list(target_modules or arch.lora_targets)
    _check_targets(model, targets)
    # the pooler (or final norm) above the last layer feeds only the head: it trains with it (a frozen one keeps
    # the features of its pretraining task; all-MiniLM-L6-v2's, never trained, squashes them near zero)
    head = set(arch.head) | {f"{arch.prefix}.{module}" for module in arch.above}
    fresh = {key.rsplit(".", 1)[0] for key in newly_initialized}  # `bert.pooler.dense.weight` -> `bert.pooler.dense`
    head |= {module for module in fresh if not any(module == h or module.startswith(f"{h}.") for h in head)}
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=targets, modules_to_save=sorted(head))
    with _quiet():
        return get_peft_model(model, config)


def frozen_names(module: nn.Module) -> set[str]:
    """State-dict keys of the frozen parameters: what a LoRA checkpoint leaves out."""
    return {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def base_fingerprint(module: nn.Module) -> float:
    """A checksum of the frozen pretrained weights (not the frozen copies of the head peft keeps beside the trained
    ones, which are freshly initialized)."""
    with torch.no_grad():
        return math.fsum(p.double().sum().item() for name, p in module.named_parameters()
                         if not p.requires_grad and ".original_module." not in name)


def merged(model: nn.Module) -> PreTrainedModel:
    """The plain HF model: LoRA updates folded into the weights, the trained head in place (changes `model`)."""
    if isinstance(model, PreTrainedModel):
        return model
    with _quiet():
        return model.merge_and_unload()


@contextmanager
def _quiet() -> Iterator[None]:
    """peft asks transformers for `is_gradient_checkpointing`, which transformers 5 deprecates: noise for users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
