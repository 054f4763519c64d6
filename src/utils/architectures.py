"""Where each encoder architecture keeps its embeddings, layers and classification head, by parameter name.

Layer-wise learning-rate decay (`src.optim`) needs each parameter's depth, and LoRA (`src.lora`) the attention
projections to adapt and the head to train in full. Both read this one table, keyed on the HF config's
`model_type`. Adding an architecture is one entry. Names are those of the `AutoModelForSequenceClassification`
(under PEFT: of `get_base_model()`, whose LoRA layers keep the names of the layers they adapt).
"""

import re
from dataclasses import dataclass

from transformers import PretrainedConfig

from src.utils.errors import UserInputError


@dataclass(frozen=True)
class Architecture:
    """Parameter-name layout of one `model_type`.

    Args:
        prefix: the base model's attribute in `AutoModelForSequenceClassification` (`base_model_prefix`).
        embeddings: modules of the base model below the first layer (token/position embeddings and their norms).
        layers: the numbered layer list of the base model; `<layers>.<i>.` is layer i.
        above: modules of the base model above the last layer (pooler, final norm): they go with the head.
        layer0: modules outside the layer list that run with layer 0 (DeBERTa-v2's convolution).
        head: modules the classification model adds on top of the base model (trained in full under LoRA).
        lora_targets: default LoRA targets: the attention query and value projections (Hu et al. 2021).
    """

    prefix: str
    embeddings: tuple[str, ...]
    layers: str
    head: tuple[str, ...]
    lora_targets: tuple[str, ...]
    above: tuple[str, ...] = ()
    layer0: tuple[str, ...] = ()


_BERT_LIKE = {"embeddings": ("embeddings",), "layers": "encoder.layer", "above": ("pooler",),
              "lora_targets": ("query", "value")}
ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(prefix="bert", head=("classifier",), **_BERT_LIKE),
    "roberta": Architecture(prefix="roberta", head=("classifier",), **_BERT_LIKE),
    "xlm-roberta": Architecture(prefix="roberta", head=("classifier",), **_BERT_LIKE),
    "camembert": Architecture(prefix="roberta", head=("classifier",), **_BERT_LIKE),
    "electra": Architecture(prefix="electra", embeddings=("embeddings", "embeddings_project"),
                            layers="encoder.layer", head=("classifier",), lora_targets=("query", "value")),
    # relative-position embeddings (and their norm) are shared by all layers and sit below them
    "deberta-v2": Architecture(prefix="deberta", embeddings=("embeddings", "encoder.rel_embeddings",
                                                             "encoder.LayerNorm"),
                               layers="encoder.layer", layer0=("encoder.conv",), head=("pooler", "classifier"),
                               lora_targets=("query_proj", "value_proj")),
    "modernbert": Architecture(prefix="model", embeddings=("embeddings",), layers="layers", above=("final_norm",),
                               head=("head", "classifier"), lora_targets=("Wqkv",)),  # fused q, k, v
    "distilbert": Architecture(prefix="distilbert", embeddings=("embeddings",), layers="transformer.layer",
                               head=("pre_classifier", "classifier"), lora_targets=("q_lin", "v_lin")),
}


def architecture_of(config: PretrainedConfig, purpose: str) -> Architecture:
    """The table entry for `config.model_type`; an unknown type is a user error naming `purpose` and the fix."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UserInputError(
            f"{purpose} does not know where model_type '{model_type}' keeps its layers (known: "
            f"{', '.join(sorted(ARCHITECTURES))}): add it to ARCHITECTURES in src/utils/architectures.py, or drop "
            "the option"
        )
    return ARCHITECTURES[model_type]


def depth_of(name: str, arch: Architecture, num_layers: int) -> int | None:
    """0 for the embeddings, l for encoder layer l (1..num_layers), num_layers + 1 for the head and what sits
    above the last layer; None for a base-model parameter the table does not place (an unknown module)."""
    def found(modules: tuple[str, ...]) -> bool:
        return any(name.startswith(f"{arch.prefix}.{module}.") for module in modules)

    if found(arch.embeddings):
        return 0
    layer = re.match(rf"{re.escape(f'{arch.prefix}.{arch.layers}.')}(\d+)\.", name)
    if layer is not None:
        return int(layer.group(1)) + 1
    if found(arch.layer0):
        return 1
    if found(arch.above) or not name.startswith(f"{arch.prefix}."):
        return num_layers + 1
    return None
