"""Tiny offline stand-ins for the hub: a small random BERT with its tokenizer, and a Yelp-schema dataset.

They are written with `save_pretrained` / as `data/{train,test}-*.parquet`, so the code under test goes
through the real `from_pretrained` and `load_dataset` paths.
"""

import random
from pathlib import Path

import datasets
from transformers import AutoConfig, BertConfig, BertModel, BertTokenizerFast, PretrainedConfig

STAR_WORDS = ["awful", "poor", "okay", "good", "superb"]
FILLER = ["the", "food", "service", "staff", "place", "was", "and", "we", "it", "our", "table", "time", "order",
          "visit", "price", "menu", "room"]
LABEL_NAMES = ["1 star", "2 star", "3 stars", "4 stars", "5 stars"]  # as yelp_review_full spells them


def write_tiny_bert(directory: Path, max_position_embeddings: int = 128) -> Path:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *STAR_WORDS, *FILLER, "very", "not", "\\", "n"]
    directory.mkdir(parents=True, exist_ok=True)
    # transformers 5 ignores `vocab_file` here; the vocab must be passed as a dict
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True,
                                  model_max_length=max_position_embeddings)
    tokenizer.save_pretrained(directory)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=max_position_embeddings)
    BertModel(config).save_pretrained(directory)  # a base model without a head, like the MiniLM package
    return directory


def review(label: int, rng: random.Random, max_words: int = 60) -> str:
    """A synthetic review whose star word (repeated) reveals its label among random filler."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, max_words))]
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randrange(len(words) + 1), STAR_WORDS[label])
    return " ".join(words)


def yelp_like_split(n: int, seed: int) -> datasets.Dataset:
    rng = random.Random(seed)
    labels = [i % 5 for i in range(n)]
    rng.shuffle(labels)
    features = datasets.Features({"label": datasets.ClassLabel(names=LABEL_NAMES), "text": datasets.Value("string")})
    return datasets.Dataset.from_dict({"label": labels, "text": [review(y, rng) for y in labels]}, features=features)


def write_dataset(directory: Path, splits: dict[str, datasets.Dataset]) -> Path:
    (directory / "data").mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        split.to_parquet(str(directory / "data" / f"{name}-00000-of-00001.parquet"))
    return directory


def write_tiny_yelp(directory: Path, n_train: int = 200, n_test: int = 60) -> Path:
    return write_dataset(directory, {"train": yelp_like_split(n_train, 0), "test": yelp_like_split(n_test, 1)})


ARCHITECTURES = ("bert", "roberta", "deberta-v2", "electra", "modernbert", "distilbert")


def tiny_config(model_type: str, num_labels: int = 5, num_layers: int = 3) -> PretrainedConfig:
    """A random config of each BERT-family architecture the recipes support, small enough to build in ms."""
    common = {"vocab_size": 64, "max_position_embeddings": 64, "num_labels": num_labels, "pad_token_id": 0}
    if model_type == "distilbert":
        return AutoConfig.for_model("distilbert", dim=32, n_layers=num_layers, n_heads=2, hidden_dim=64, **common)
    extra = {
        "deberta-v2": {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "norm_rel_ebd": "layer_norm",
                       "position_buckets": 16, "max_relative_positions": 64},
        "electra": {"embedding_size": 16},  # an embeddings_project layer, as in ELECTRA-small
        "modernbert": {"global_attn_every_n_layers": 1, "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1,
                       "sep_token_id": 2},
    }.get(model_type, {})
    return AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
                                intermediate_size=64, **common, **extra)
