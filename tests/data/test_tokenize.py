"""Tokenization and its cache (`src.data.tokenize`): the three truncation strategies token by token, and a damaged
cache entry found and rebuilt without touching anything else."""

import gc
import hashlib
import re
import warnings
from pathlib import Path
from typing import Any

import datasets
import pytest
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from src.data import TextClassificationDataModule
from src.data.tokenize import SpecialTokens, cut
from src.utils.errors import UserInputError
from tests.fixtures import FILLER, STAR_WORDS, write_dataset

LONG = [*FILLER, *STAR_WORDS[:3]]  # 20 words, one token each
SHORT = ["good", "food"]


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(tiny_bert))


def reviews_dataset(directory: Path) -> Path:
    """Test split: one 20-token review and one 2-token review (in that order); a small train split."""
    def split(texts: list[str]) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"label": [i % 5 for i in range(len(texts))], "text": texts})
    return write_dataset(directory, {"train": split(["good food", "poor service", "okay"] * 4),
                                     "test": split([" ".join(LONG), " ".join(SHORT)])})


def prepared(dataset: Path, tokenizer_dir: Path, **kwargs: Any) -> TextClassificationDataModule:
    kwargs.setdefault("max_length", 64)
    dm = TextClassificationDataModule(dataset=str(dataset), tokenizer_name_or_path=str(tokenizer_dir), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize(("truncation", "kept"), [
    ("head", LONG[:10]),
    ("tail", LONG[-10:]),
    ("head_tail", LONG[:4] + LONG[-6:]),  # head_tokens=4, then 12 - 4 - 2 specials = 6 from the end
])
def test_truncation_layout(truncation: str, kept: list[str], tmp_path: Path, tiny_bert: Path,
                           tokenizer: PreTrainedTokenizerBase) -> None:
    """max_length 12: [CLS] + the 10 review tokens the strategy keeps + [SEP], token types 0, attention 1; the short
    review is exactly what the tokenizer makes of it untruncated; collated batches keep that."""
    dm = prepared(reviews_dataset(tmp_path / "ds"), tiny_bert, max_length=12, truncation=truncation, head_tokens=4)
    test = dm.splits["test"]
    expected = [tokenizer.cls_token_id, *tokenizer.convert_tokens_to_ids(kept), tokenizer.sep_token_id]
    assert tokenizer.unk_token_id not in expected
    assert test[0]["input_ids"] == expected
    assert test[0]["token_type_ids"] == [0] * 12 and test[0]["attention_mask"] == [1] * 12
    assert test[0]["length"] == 12
    untouched = tokenizer(" ".join(SHORT))
    assert {key: test[1][key] for key in untouched} == dict(untouched)
    assert test[1]["length"] == 4
    [batch] = list(dm.test_dataloader())
    assert batch["input_ids"].shape == batch["token_type_ids"].shape == batch["attention_mask"].shape == (2, 12)


def test_cut_keeps_the_chosen_ids() -> None:
    ids = list(range(20))
    assert cut(ids, "head", 10, 4) == list(range(10))
    assert cut(ids, "tail", 10, 4) == list(range(10, 20))
    assert cut(ids, "head_tail", 10, 4) == [0, 1, 2, 3, *range(14, 20)]
    for truncation in ("head", "tail", "head_tail"):
        assert cut(ids[:10], truncation, 10, 4) == ids[:10]


def test_special_tokens_follow_the_tokenizer_layout(tiny_bert: Path) -> None:
    """Another layout (review, [SEP], then [CLS] with token type 2, as XLNet does): the special tokens go where
    the tokenizer puts them, with its token types."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="$A:0 [SEP]:0 [CLS]:2", special_tokens=[("[SEP]", tokenizer.sep_token_id),
                                                        ("[CLS]", tokenizer.cls_token_id)])
    text = "good food and superb staff"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert SpecialTokens(tokenizer).add(ids) == dict(tokenizer(text))
    assert SpecialTokens(tokenizer).add(ids)["token_type_ids"][-1] == 2


@pytest.mark.parametrize(("head_tokens", "ok"), [(9, True), (10, False), (50, False)])
def test_head_tokens_must_leave_tail_tokens(head_tokens: int, ok: bool, tmp_path: Path, tiny_bert: Path) -> None:
    """head_tail with max_length 12 has 10 review tokens: head_tokens 9 keeps one tail token, 10 keeps none."""
    dm = TextClassificationDataModule(dataset=str(reviews_dataset(tmp_path / "ds")),
                                      tokenizer_name_or_path=str(tiny_bert), max_length=12, truncation="head_tail",
                                      head_tokens=head_tokens)
    if ok:
        dm.prepare_data()
    else:
        with pytest.raises(UserInputError, match=rf"data.head_tokens={head_tokens} must be below 10 .*max_length"):
            dm.prepare_data()


def test_truncation_is_part_of_the_cache_key(tmp_path: Path, tiny_bert: Path) -> None:
    """Each strategy (and, for head_tail only, each head_tokens) gets its own cache entry."""
    dataset, cache = reviews_dataset(tmp_path / "ds"), tmp_path / "cache"
    for kwargs in ({}, {"head_tokens": 3}, {"truncation": "tail"}, {"truncation": "head_tail", "head_tokens": 4},
                   {"truncation": "head_tail", "head_tokens": 5}):
        prepared(dataset, tiny_bert, max_length=12, cache_dir=str(cache), **kwargs)
    assert len(entries(cache)) == 4  # head_tokens does not matter for head


# ----- damaged cache ------------------------------------------------------------------------------------------
def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
            if p.is_file()}


def input_ids(dm: TextClassificationDataModule) -> dict[str, list[list[int]]]:
    """Read into Python lists (a `split[column]` is a lazy view of the memory-mapped file)."""
    return {name: split.data.column("input_ids").to_pylist() for name, split in dm.splits.items()}


def damage(entry: Path, how: str) -> Path:
    arrow = sorted((entry / "train").glob("*.arrow"))[0]
    if how == "truncate":
        data = arrow.read_bytes()
        arrow.write_bytes(data[: len(data) // 2])
    else:
        arrow.unlink()
    return arrow


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_damaged_cache_entry_is_rebuilt(how: str, tiny_yelp: Path, tiny_bert: Path, tmp_path: Path) -> None:
    """A truncated or deleted .arrow file: the next prepare_data says so in one warning naming the entry, rebuilds
    it, and the data is as before; the other entry and unrelated files in the cache dir are untouched."""
    cache = tmp_path / "cache"
    prepared(tiny_yelp, tiny_bert, cache_dir=str(cache), max_length=16)
    [other] = entries(cache)
    (cache / "notes.txt").write_text("not ours")
    first = prepared(tiny_yelp, tiny_bert, cache_dir=str(cache), max_length=32)
    expected = input_ids(first)
    [entry] = [path for path in entries(cache) if path != other]
    del first
    gc.collect()  # drop the memory maps of the file about to be damaged
    kept = {other: digests(other), cache / "notes.txt": (cache / "notes.txt").read_text()}
    damage(entry, how)

    with pytest.warns(UserWarning, match=re.escape(str(entry))) as warned:
        again = prepared(tiny_yelp, tiny_bert, cache_dir=str(cache), max_length=32)
    [message] = [str(w.message) for w in warned if str(entry) in str(w.message)]
    assert "\n" not in message and "is damaged" in message and message.endswith("rebuilding it")
    assert input_ids(again) == expected
    assert entries(cache) == sorted([entry, other])
    assert digests(other) == kept[other] and (cache / "notes.txt").read_text() == kept[cache / "notes.txt"]
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "staging leftovers"
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        prepared(tiny_yelp, tiny_bert, cache_dir=str(cache), max_length=32)
    assert not [w for w in later if str(entry) in str(w.message)], "whole again: no warning"


def test_setup_on_a_damaged_entry_is_one_line(tiny_yelp: Path, tiny_bert: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    prepared(tiny_yelp, tiny_bert, cache_dir=str(cache))
    gc.collect()
    [entry] = entries(cache)
    damage(entry, "delete")
    dm = TextClassificationDataModule(dataset=str(tiny_yelp), tokenizer_name_or_path=str(tiny_bert),
                                      max_length=64, cache_dir=str(cache))
    with pytest.raises(UserInputError, match=re.escape(str(entry)) + r" is damaged \(train/.*missing\)"):
        dm.setup("fit")
