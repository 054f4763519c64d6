"""Tokenize drawn splits once (with a truncation strategy) and keep them in a cache entry that is verified on load.

Truncation (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?"): `head` keeps the first tokens
(the tutorial's), `tail` the last ones, `head_tail` the first `head_tokens` and the last ones (the paper's best on
long IMDb and Sogou documents).

A cache entry is a `DatasetDict.save_to_disk` directory keyed on everything that decides its content, published
atomically with a manifest of its files' sizes and rows; an entry that no longer matches it (a truncated or
deleted file) is found with a few `stat`s and rebuilt.
"""

import dataclasses
import json
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase

from src.utils.atomic import atomic_write
from src.utils.errors import UserInputError

MANIFEST = "manifest.json"
CACHE_FORMAT = 2  # bump when what an entry holds changes, so older entries are not reused


@dataclass(frozen=True)
class Tokenization:
    """Everything besides the data and the tokenizer that decides the tokenized result (all of it in the key)."""

    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 512
    truncation: Literal["head", "tail", "head_tail"] = "head"
    head_tokens: int = 128

    def check(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Refuse lengths the model or the truncation strategy cannot serve."""
        model_max = tokenizer.model_max_length
        if model_max and model_max < 10**6 and self.max_length > model_max:
            raise UserInputError(
                f"data.max_length={self.max_length} exceeds what the model supports ({model_max} positions): "
                f"set --data.max_length {model_max} or lower"
            )
        review_tokens = self.max_length - tokenizer.num_special_tokens_to_add(pair=False)
        if self.truncation == "head_tail" and self.head_tokens >= review_tokens:
            raise UserInputError(
                f"data.head_tokens={self.head_tokens} must be below {review_tokens} with data.truncation=head_tail "
                f"(data.max_length={self.max_length} minus {self.max_length - review_tokens} special tokens), so "
                "that tail tokens are kept: lower data.head_tokens or raise data.max_length"
            )


def cut(ids: list[int], truncation: str, budget: int, head_tokens: int) -> list[int]:
    """At most `budget` of a review's token ids (no special tokens), chosen by the truncation strategy."""
    if len(ids) <= budget:
        return ids
    if truncation == "head":
        return ids[:budget]
    if truncation == "tail":
        return ids[len(ids) - budget:]
    return ids[:head_tokens] + ids[len(ids) - (budget - head_tokens):]


class SpecialTokens:
    """The tokenizer's single-sequence layout (prefix + review + suffix, with token types and attention), learnt
    by tokenizing a probe with and without special tokens. transformers 5's fast tokenizers have no
    `build_inputs_with_special_tokens` / `prepare_for_model`; this works for every BERT-family layout
    ([CLS] x [SEP], <s> x </s>, x <sep> <cls>)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        plain = tokenizer("review", add_special_tokens=False)["input_ids"]
        self.layout = {key: list(values) for key, values in tokenizer("review").items()}
        ids = self.layout["input_ids"]
        starts = [i for i in range(len(ids) - len(plain) + 1) if ids[i:i + len(plain)] == plain]
        if not plain or not starts:
            raise UserInputError(f"cannot find where {type(tokenizer).__name__} puts a review between its special "
                                 "tokens: use data.truncation=head")
        self.start, self.end = starts[0], starts[0] + len(plain)

    def add(self, ids: list[int]) -> dict[str, list[int]]:
        """What `tokenizer(text)` returns for a text whose tokens are `ids`."""
        return {key: values[:self.start] + (ids if key == "input_ids" else values[self.start:self.start + 1] * len(ids))
                + values[self.end:] for key, values in self.layout.items()}


def encoder(tokenizer: PreTrainedTokenizerBase, tokenization: Tokenization,
            keep_text: bool) -> Callable[[dict[str, list], list[int]], dict[str, list]]:
    """The batched `Dataset.map` function: model inputs, `length`, `idx` (row in the split), `labels` if the split
    has them, and the review as `text` if `keep_text` (never fed to the model)."""
    tok = tokenization
    specials = None if tok.truncation == "head" else SpecialTokens(tokenizer)
    budget = tok.max_length - tokenizer.num_special_tokens_to_add(pair=False)

    def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        texts = batch[tok.text_column]
        if specials is None:  # the tokenizer's own truncation: the tutorial's exact inputs
            encoded: dict[str, Any] = dict(tokenizer(texts, truncation=True, max_length=tok.max_length))
        else:
            rows = [specials.add(cut(ids, tok.truncation, budget, tok.head_tokens))
                    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
            encoded = {key: [row[key] for row in rows] for key in specials.layout}
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        encoded["idx"] = indices
        if tok.label_column in batch:
            encoded["labels"] = batch[tok.label_column]
        if keep_text:
            encoded["text"] = texts
        return encoded

    return encode


def tokenize_splits(sources: dict[str, datasets.Dataset], tokenizer: PreTrainedTokenizerBase,
                    tokenization: Tokenization, keep_text: Collection[str],
                    num_proc: int | None = None) -> datasets.DatasetDict:
    """Every split tokenized; `num_proc=None`: 1 process for small splits, up to 8 for large ones."""
    tokenized = {}
    for name, split in sources.items():
        procs = num_proc or (1 if len(split) < 20_000 else min(8, os.cpu_count() or 1))
        tokenized[name] = split.map(
            encoder(tokenizer, tokenization, keep_text=name in keep_text), batched=True, with_indices=True,
            num_proc=procs if procs > 1 else None, remove_columns=split.column_names, desc=f"Tokenizing {name}",
            load_from_cache_file=False, keep_in_memory=procs == 1,
        )
    return datasets.DatasetDict(tokenized)


def cache_path(root: Path, dataset: str, sources: dict[str, datasets.Dataset], tokenizer: PreTrainedTokenizerBase,
               tokenization: Tokenization, keep_text: Collection[str]) -> Path:
    """The entry for these drawn splits (their fingerprints record the draw), tokenizer and settings."""
    tokenizer_state: Any = tokenizer.backend_tokenizer.to_str() if tokenizer.is_fast else tokenizer
    if isinstance(tokenizer_state, str):  # truncation/padding state changes once the tokenizer is used
        tokenizer_state = {k: v for k, v in json.loads(tokenizer_state).items() if k not in ("truncation", "padding")}
    if tokenization.truncation != "head_tail":  # head_tokens changes nothing then
        tokenization = dataclasses.replace(tokenization, head_tokens=0)
    key = Hasher.hash({
        "format": CACHE_FORMAT,
        "data": {name: split._fingerprint for name, split in sources.items()},
        "tokenizer": (type(tokenizer).__name__, tokenizer_state),
        "tokenization": dataclasses.asdict(tokenization),
        "keep_text": sorted(set(keep_text) & set(sources)),
    })
    name = Path(dataset).name if Path(dataset).exists() else dataset.replace("/", "--")
    return root / f"{name}-{key}"


class DamagedCache(Exception):
    """A cache entry that does not match its manifest; the message says what is wrong."""


def save_cache(tokenized: datasets.DatasetDict, path: Path) -> None:
    """Publish the entry atomically, replacing a damaged one at `path`, with its manifest (file sizes, rows)."""
    try:
        with atomic_write(path, directory=True, overwrite=path.exists()) as staging:
            tokenized.save_to_disk(str(staging))
            files = {p.relative_to(staging).as_posix(): p.stat().st_size
                     for p in sorted(staging.rglob("*")) if p.is_file()}
            rows = {name: len(split) for name, split in tokenized.items()}
            (staging / MANIFEST).write_text(json.dumps({"rows": rows, "files": files}, indent=1))
    except FileExistsError:
        pass  # another process published the same entry meanwhile: that one serves


def load_cache(path: Path) -> datasets.DatasetDict:
    """The entry at `path` (memory-mapped), checked against its manifest; `DamagedCache` says what is wrong."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise DamagedCache(f"unreadable {MANIFEST}: {type(err).__name__}") from None
    for name, size in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise DamagedCache(f"{name} is missing")
        if (actual := file.stat().st_size) != size:
            raise DamagedCache(f"{name} has {actual} bytes, its manifest says {size}")
    try:
        tokenized = datasets.load_from_disk(str(path))
    except Exception as err:  # whatever datasets/pyarrow raise on a damaged directory
        raise DamagedCache(f"load_from_disk failed: {type(err).__name__}: {err}") from None
    rows = {name: len(split) for name, split in tokenized.items()}
    if rows != manifest["rows"]:
        raise DamagedCache(f"rows {rows}, its manifest says {manifest['rows']}")
    return tokenized
