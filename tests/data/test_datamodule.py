"""Properties of `TextClassificationDataModule` on the tiny offline fixtures: tokenization and padding, seeded subsets
(the HF tutorial's draw), the validation carve, the tokenized cache, input errors and prediction files.

Data modules run without a Trainer (one process, CPU). The tokenized splits keep `idx` (position in the drawn
split), not the raw row, so rows are identified by comparing input_ids with an independent tokenization of the
expected texts."""

import csv
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from src.data import TextClassificationDataModule, datamodule
from src.utils.errors import UserInputError
from tests.fixtures import LABEL_NAMES, STAR_WORDS, write_dataset, yelp_like_split

MAX_LENGTH = 128  # the tiny BERT's positions: no review in the fixture is truncated at this length

Ids = tuple[int, ...]


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path) -> PreTrainedTokenizerBase:
    """An independent copy of the tokenizer under test, to compute expected input_ids."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    assert tokenizer.convert_tokens_to_ids(STAR_WORDS) == list(range(5, 10)), "words must not map to [UNK]"
    return tokenizer


def test_tiny_bert_tokenizer_knows_words(tiny_bert: Path) -> None:
    """The tiny BERT's tokenizer maps the fixture's review words to their own ids, not all to [UNK]."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    ids = tokenizer("awful food superb", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["awful", "food", "superb"]


def make_dm(dataset: Path | str, tokenizer_dir: Path | str, **kwargs: Any) -> TextClassificationDataModule:
    kwargs.setdefault("max_length", MAX_LENGTH)
    return TextClassificationDataModule(dataset=str(dataset), tokenizer_name_or_path=str(tokenizer_dir), **kwargs)


def prepared(
    dataset: Path | str, tokenizer_dir: Path | str, stage: str = "fit", **kwargs: Any
) -> TextClassificationDataModule:
    dm = make_dm(dataset, tokenizer_dir, **kwargs)
    dm.prepare_data()
    dm.setup(stage)
    return dm


def ids_of(texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int = MAX_LENGTH) -> list[Ids]:
    return [tuple(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]


def split_ids(dm: TextClassificationDataModule, name: str) -> list[Ids]:
    return [tuple(ids) for ids in dm.splits[name]["input_ids"]]


def raw_split(directory: Path, name: str) -> datasets.Dataset:
    return datasets.load_dataset(str(directory))[name]


def cache_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not p.name.startswith("."))


# ----- tokenization, padding, truncation ------------------------------------------------------------------
def test_train_batches_padded_to_longest_with_aligned_labels(
    tiny_yelp: Path, tiny_bert: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    """padding=longest: each batch is as wide as its longest review; labels travel with their review (every
    fixture review contains its star word); an epoch covers every training row once."""
    dm = prepared(tiny_yelp, tiny_bert, batch_size=16)
    star_ids = tokenizer.convert_tokens_to_ids(STAR_WORDS)
    seen: list[int] = []
    widths = set()
    for batch in dm.train_dataloader():
        assert {"input_ids", "attention_mask", "labels"} <= set(batch)
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())
        assert torch.equal(batch["attention_mask"].sum(1), batch["length"])
        for ids, label in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
            assert star_ids[label] in ids
        seen.extend(batch["idx"].tolist())
        widths.add(batch["input_ids"].shape[1])
    assert sorted(seen) == list(range(len(dm.splits["train"])))
    assert len(widths) > 1, "longest padding should give batches of different widths"


def test_padding_max_length_pads_every_batch_to_max_length(tiny_yelp: Path, tiny_bert: Path) -> None:
    """padding=max_length (the tutorial's): every train and validation batch is exactly max_length wide."""
    dm = prepared(tiny_yelp, tiny_bert, padding="max_length", max_length=96, batch_size=16)
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        widths = {batch["input_ids"].shape[1] for batch in loader}
        assert widths == {96}


def test_truncation_to_max_length(tiny_yelp: Path, tiny_bert: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """No tokenized row is longer than max_length; long reviews are cut to exactly max_length, ending in [SEP]."""
    dm = prepared(tiny_yelp, tiny_bert, max_length=16)
    for name in ("train", "validation", "test"):
        split = dm.splits[name]
        lengths = [len(ids) for ids in split["input_ids"]]
        assert lengths == split["length"]
        assert max(lengths) == 16, "the fixture has reviews longer than 16 tokens: some rows must be truncated"
        assert all(ids[-1] == tokenizer.sep_token_id for ids in split["input_ids"])
    batch_widths = {batch["input_ids"].shape[1] for batch in dm.train_dataloader()}
    assert max(batch_widths) == 16


def test_max_tokens_bounds_train_batches(tiny_yelp: Path, tiny_bert: Path) -> None:
    """With max_tokens, every collated training batch has at most max_tokens (padded) tokens; all rows come once."""
    dm = prepared(tiny_yelp, tiny_bert, max_tokens=256, batch_size=4)
    seen: list[int] = []
    for batch in dm.train_dataloader():
        assert batch["input_ids"].numel() <= 256
        seen.extend(batch["idx"].tolist())
    assert sorted(seen) == list(range(len(dm.splits["train"])))


@pytest.mark.parametrize("loader", ["val_dataloader", "test_dataloader"])
def test_eval_loaders_yield_every_row_once(tiny_yelp: Path, tiny_bert: Path, loader: str) -> None:
    """Validation and test loaders yield every row of their split exactly once (no repeats, nothing dropped)."""
    dm = prepared(tiny_yelp, tiny_bert, eval_batch_size=7)
    name = "validation" if loader == "val_dataloader" else "test"
    seen = [i for batch in getattr(dm, loader)() for i in batch["idx"].tolist()]
    assert sorted(seen) == list(range(len(dm.splits[name])))


# ----- seeded subsets ---------------------------------------------------------------------------------------
def test_subsets_same_for_same_seed_different_for_another(tiny_yelp: Path, tiny_bert: Path) -> None:
    """train_size/eval_size draw the same rows for the same seed in two fresh data modules, others for a new seed."""
    kwargs = {"train_size": 50, "eval_size": 20}
    first, again = prepared(tiny_yelp, tiny_bert, seed=1, **kwargs), prepared(tiny_yelp, tiny_bert, seed=1, **kwargs)
    other = prepared(tiny_yelp, tiny_bert, seed=2, **kwargs)
    for name, size in (("train", 50), ("validation", 20), ("test", 20)):
        assert len(first.splits[name]) == size
        assert split_ids(first, name) == split_ids(again, name)
        assert set(split_ids(first, name)) != set(split_ids(other, name))


@pytest.mark.parametrize("seed", [42, 7])
def test_subsets_are_the_tutorial_draw(
    tiny_yelp: Path, tiny_bert: Path, tokenizer: PreTrainedTokenizerBase, seed: int
) -> None:
    """train = raw train.shuffle(seed).select(range(train_size)) and test = raw test.shuffle(seed).select(
    range(eval_size)), row for row and in order, labels included (the HF tutorial's subsets)."""
    dm = prepared(tiny_yelp, tiny_bert, seed=seed, train_size=50, eval_size=20)
    for name, size in (("train", 50), ("test", 20)):
        expected = raw_split(tiny_yelp, name).shuffle(seed=seed).select(range(size))
        assert split_ids(dm, name) == ids_of(expected["text"], tokenizer)
        assert dm.splits[name]["labels"] == expected["label"]


# ----- validation split --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "n_val"), [
    ({}, 20),  # default val_fraction=0.1 of 200
    ({"val_fraction": 0.25}, 50),
    ({"val_size": 30}, 30),
    ({"val_size": 30, "val_fraction": 0.25}, 30),  # val_size wins
])
def test_validation_carved_from_train(
    tiny_yelp: Path, tiny_bert: Path, tokenizer: PreTrainedTokenizerBase, kwargs: dict, n_val: int
) -> None:
    """Without a validation file, validation is n_val rows of the train file, disjoint from the train split, which
    keeps the rest; the test split is the test file as is; the carve is the same on a re-run."""
    dm = prepared(tiny_yelp, tiny_bert, **kwargs)
    train, validation = Counter(split_ids(dm, "train")), Counter(split_ids(dm, "validation"))
    assert validation.total() == n_val and train.total() == 200 - n_val
    assert not train & validation, "validation rows leak into train"
    assert train + validation == Counter(ids_of(raw_split(tiny_yelp, "train")["text"], tokenizer))
    assert split_ids(dm, "test") == ids_of(raw_split(tiny_yelp, "test")["text"], tokenizer)
    again = prepared(tiny_yelp, tiny_bert, **kwargs)
    assert split_ids(again, "validation") == split_ids(dm, "validation")
    assert split_ids(again, "train") == split_ids(dm, "train")


def test_val_size_and_eval_size_together(tiny_yelp: Path, tiny_bert: Path) -> None:
    """val_size sets the carved validation split; eval_size then subsets only the test split."""
    dm = prepared(tiny_yelp, tiny_bert, val_size=12, eval_size=25)
    assert len(dm.splits["validation"]) == 12 and len(dm.splits["test"]) == 25
    assert len(dm.splits["train"]) == 200 - 12


def test_validation_file_used_as_is(tmp_path: Path, tiny_bert: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """A dataset dir with a validation split file: validation is that file, row for row; train keeps all its rows."""
    directory = write_dataset(tmp_path / "ds", {
        "train": yelp_like_split(40, 0), "validation": yelp_like_split(15, 2), "test": yelp_like_split(10, 1),
    })
    dm = prepared(directory, tiny_bert, val_fraction=0.5)
    assert split_ids(dm, "validation") == ids_of(raw_split(directory, "validation")["text"], tokenizer)
    assert Counter(split_ids(dm, "train")) == Counter(ids_of(raw_split(directory, "train")["text"], tokenizer))
    assert split_ids(dm, "test") == ids_of(raw_split(directory, "test")["text"], tokenizer)


# ----- tokenized cache ----------------------------------------------------------------------------------------
def test_cache_reused_and_keyed_on_max_length_and_draw(
    tiny_yelp: Path, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second data module with the same settings loads the cache without tokenizing; a different max_length or
    seed gets its own cache dir (and is tokenized)."""
    cache = tmp_path / "tokenized"
    first = prepared(tiny_yelp, tiny_bert, cache_dir=str(cache), train_size=60)
    assert len(cache_dirs(cache)) == 1

    tokenize = datamodule.tokenize_splits
    calls: list[int] = []

    def must_not_tokenize(*args: Any, **kwargs: Any) -> datasets.DatasetDict:
        raise AssertionError("tokenized again although the cache exists")

    monkeypatch.setattr(datamodule, "tokenize_splits", must_not_tokenize)
    second = prepared(tiny_yelp, tiny_bert, cache_dir=str(cache), train_size=60)
    assert len(cache_dirs(cache)) == 1
    for name in ("train", "validation", "test"):
        assert split_ids(second, name) == split_ids(first, name)

    def counting(*args: Any, **kwargs: Any) -> datasets.DatasetDict:
        calls.append(1)
        return tokenize(*args, **kwargs)

    monkeypatch.setattr(datamodule, "tokenize_splits", counting)
    shorter = prepared(tiny_yelp, tiny_bert, cache_dir=str(cache), train_size=60, max_length=16)
    assert len(calls) == 1 and len(cache_dirs(cache)) == 2
    assert max(shorter.splits["train"]["length"]) == 16
    reseeded = prepared(tiny_yelp, tiny_bert, cache_dir=str(cache), train_size=60, seed=0)
    assert len(calls) == 2 and len(cache_dirs(cache)) == 3
    assert split_ids(reseeded, "train") != split_ids(first, "train")


def test_default_cache_lives_in_the_datasets_cache(tiny_yelp: Path, tiny_bert: Path) -> None:
    """Without cache_dir, tokenized data goes under <HF datasets cache>/review_classifier_tokenized."""
    prepared(tiny_yelp, tiny_bert)
    root = Path(datasets.config.HF_DATASETS_CACHE) / "review_classifier_tokenized"
    [cached] = cache_dirs(root)
    assert cached.name.startswith(f"{tiny_yelp.name}-")
    assert (cached / "dataset_dict.json").is_file()


# ----- input errors ---------------------------------------------------------------------------------------------
def labelled(labels: list, texts: list, label_feature: datasets.Value | datasets.ClassLabel | None = None,
             label_column: str = "label", text_column: str = "text") -> datasets.Dataset:
    features = datasets.Features({label_column: label_feature or datasets.Value("int64"),
                                  text_column: datasets.Value("string")})
    return datasets.Dataset.from_dict({label_column: labels, text_column: texts}, features=features)


GOOD = ["good food", "poor service", "okay place", "superb staff"]
BAD_DATA: dict[str, tuple[Callable[[], dict[str, datasets.Dataset]], str]] = {
    "missing text column": (lambda: {"train": labelled([0, 1, 2, 3], GOOD, text_column="review")},
                            "no text column 'text'"),
    "missing label column": (lambda: {"train": labelled([0, 1, 2, 3], GOOD, label_column="stars")},
                             "no label column 'label'"),
    "label out of range": (lambda: {"train": labelled([0, 7, 2, 3], GOOD)}, "label 7 "),
    "negative label": (lambda: {"train": labelled([0, -1, 2, 3], GOOD)}, "label -1 "),
    "label out of range in test": (lambda: {"train": labelled([0, 1, 2, 3], GOOD),
                                            "test": labelled([0, 5], GOOD[:2])}, "label 5 in split 'test'"),
    "string labels": (lambda: {"train": labelled(["1 star", "2 star", "3 stars", "4 stars"], GOOD,
                                                 datasets.Value("string"))}, "has type string"),
    "null label": (lambda: {"train": labelled([0, None, 2, None], GOOD)}, "2 null labels"),
    "null label (ClassLabel)": (lambda: {"train": labelled([0, None, 2, 3], GOOD, datasets.ClassLabel(
        names=LABEL_NAMES))}, "1 null labels"),
    "null text": (lambda: {"train": labelled([0, 1, 2, 3], [GOOD[0], None, GOOD[2], GOOD[3]])},
                  "1 null values in text column 'text'"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_raises_user_input_error(case: str, tmp_path: Path, tiny_bert: Path) -> None:
    """Each kind of bad data is rejected by prepare_data with a UserInputError naming the bad value."""
    build, message = BAD_DATA[case]
    directory = write_dataset(tmp_path / "bad", build())
    with pytest.raises(UserInputError, match=re.escape(message)):
        make_dm(directory, tiny_bert).prepare_data()


@pytest.mark.parametrize("empty", ["train", "test"])
def test_empty_split_raises_user_input_error(empty: str, tmp_path: Path, tiny_bert: Path) -> None:
    """An empty split file is a UserInputError naming the split."""
    splits = {"train": labelled([0, 1, 2, 3], GOOD), "test": labelled([0, 1], GOOD[:2])}
    splits[empty] = splits[empty].select([])
    directory = write_dataset(tmp_path / "empty", splits)
    with pytest.raises(UserInputError, match=f"'{empty}'"):
        make_dm(directory, tiny_bert).prepare_data()


@pytest.mark.parametrize("num_labels", [3, 6])
def test_num_labels_must_match_dataset(num_labels: int, tiny_yelp: Path, tiny_bert: Path) -> None:
    """num_labels that disagrees with the dataset (fewer classes than labels used, or not the ClassLabel's count)
    is rejected, naming the configured num_labels."""
    with pytest.raises(UserInputError, match=f"num_labels={num_labels}"):
        make_dm(tiny_yelp, tiny_bert, num_labels=num_labels).prepare_data()


def test_missing_dataset_dir(tmp_path: Path, tiny_bert: Path) -> None:
    """A dataset path that does not exist is named in the error (no hub lookup for it)."""
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(UserInputError, match=re.escape(str(missing))):
        make_dm(missing, tiny_bert).prepare_data()


def test_missing_tokenizer_dir(tiny_yelp: Path, tmp_path: Path) -> None:
    """A model/tokenizer dir that does not exist is named in the error."""
    missing = tmp_path / "no_such_model"
    with pytest.raises(UserInputError, match=re.escape(str(missing))):
        make_dm(tiny_yelp, missing).prepare_data()


def test_max_length_beyond_model_positions(tiny_yelp: Path, tiny_bert: Path) -> None:
    """max_length above the tokenizer's model_max_length (128) is rejected, naming both numbers."""
    with pytest.raises(UserInputError, match=r"max_length=256 .*\(128 positions\)"):
        make_dm(tiny_yelp, tiny_bert, max_length=256).prepare_data()
    prepared(tiny_yelp, tiny_bert, max_length=128)  # the limit itself is fine


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 0}, "batch_size=0"),
    ({"batch_size": -4}, "batch_size=-4"),
    ({"eval_batch_size": -1}, "eval_batch_size=-1"),
    ({"max_length": 0}, "max_length=0"),
    ({"max_tokens": 32, "max_length": 64}, "max_tokens=32"),
    ({"val_fraction": 1.0}, "val_fraction=1.0"),
    ({"train_size": 500}, "requested 500 rows"),
    ({"val_size": 200}, "validation size 200"),
])
def test_bad_settings_raise_user_input_error(kwargs: dict, message: str, tiny_yelp: Path, tiny_bert: Path) -> None:
    """Impossible settings are rejected (at construction or prepare_data) with the bad value in the message."""
    with pytest.raises(UserInputError, match=re.escape(message)):
        make_dm(tiny_yelp, tiny_bert, **kwargs).prepare_data()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"eval_batch_size": 0}, "eval_batch_size=0"),
    ({"train_size": 0}, "train_size=0"),
    ({"train_size": -3}, "train_size=-3"),
    ({"eval_size": 0}, "eval_size=0"),
    ({"val_size": -2}, "val_size=-2"),
])
def test_non_positive_sizes_raise_user_input_error(
    kwargs: dict, message: str, tiny_yelp: Path, tiny_bert: Path
) -> None:
    """Zero or negative batch/subset sizes are rejected up front, naming the setting and value."""
    with pytest.raises(UserInputError, match=re.escape(message)):
        prepared(tiny_yelp, tiny_bert, **kwargs)


def test_unused_extra_split_is_not_checked(tmp_path: Path, tiny_bert: Path) -> None:
    """Only the splits the experiment uses (train/validation/test) must have valid labels."""
    unlabelled = labelled([-1] * 4, GOOD)
    directory = write_dataset(tmp_path / "imdb_like", {
        "train": yelp_like_split(30, 0), "test": yelp_like_split(10, 1), "unsupervised": unlabelled,
    })
    dm = prepared(directory, tiny_bert)
    assert set(dm.splits) == {"train", "validation", "test"}


# ----- prediction files ----------------------------------------------------------------------------------------
REVIEWS = [
    "superb food and superb staff",
    "awful service, the table was not clean",  # a comma: must survive csv quoting
    "okay",
    "poor poor poor",
    "good price good menu we order it every visit",
    "very good",
    "the room was okay",
]


def write_predict_file(path: Path, reviews: list[str]) -> Path:
    if path.suffix == ".txt":
        path.write_text("\n".join(reviews) + "\n")
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "text"])
            writer.writerows(enumerate(reviews))
    else:
        path.write_text("".join(json.dumps({"id": i, "text": review}) + "\n" for i, review in enumerate(reviews)))
    return path


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".jsonl"])
def test_predict_file_loads_every_row_once(
    suffix: str, tmp_path: Path, tiny_yelp: Path, tiny_bert: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    """A .txt (one review per line), .csv or .jsonl with a text column becomes the predict split, in file order;
    predict_dataloader yields each row exactly once and `idx` points back at the row it came from."""
    path = write_predict_file(tmp_path / f"reviews{suffix}", REVIEWS)
    dm = prepared(tiny_yelp, tiny_bert, stage="predict", predict_file=str(path), eval_batch_size=3)
    assert set(dm.splits) == {"predict"}
    assert split_ids(dm, "predict") == ids_of(REVIEWS, tokenizer)
    assert dm.predict_texts() == REVIEWS
    expected = ids_of(REVIEWS, tokenizer)
    seen: list[int] = []
    for batch in dm.predict_dataloader():
        assert "labels" not in batch
        rows = zip(batch["idx"].tolist(), batch["input_ids"].tolist(), batch["attention_mask"].sum(1), strict=True)
        for idx, ids, length in rows:
            assert tuple(ids[: int(length)]) == expected[idx]
            seen.append(idx)
    assert sorted(seen) == list(range(len(REVIEWS)))


def test_predict_without_file_uses_test_split(tiny_yelp: Path, tiny_bert: Path) -> None:
    """Without predict_file, prediction runs over the (drawn) test split, every row once."""
    dm = prepared(tiny_yelp, tiny_bert, stage="predict", eval_size=25)
    seen = [i for batch in dm.predict_dataloader() for i in batch["idx"].tolist()]
    assert sorted(seen) == list(range(25))
    assert len(dm.predict_texts()) == 25


@pytest.mark.parametrize(("name", "content", "message"), [
    ("reviews.tsv", "good\n", "must end in"),
    ("reviews.csv", "id,review\n1,good\n", "no text column 'text'"),
])
def test_bad_predict_file(name: str, content: str, message: str, tmp_path: Path, tiny_yelp: Path,
                          tiny_bert: Path) -> None:
    """Unsupported file types and files without the text column are UserInputErrors."""
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserInputError, match=re.escape(message)):
        make_dm(tiny_yelp, tiny_bert, predict_file=str(path)).prepare_data()


def test_missing_predict_file(tmp_path: Path, tiny_yelp: Path, tiny_bert: Path) -> None:
    """A predict file that does not exist is named in the error."""
    missing = tmp_path / "nothing.txt"
    with pytest.raises(UserInputError, match=re.escape(str(missing))):
        make_dm(tiny_yelp, tiny_bert, predict_file=str(missing)).prepare_data()
