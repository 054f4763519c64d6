"""The draw (`src.data.splits`): a test split carved from train when the dataset has none, stratified folds, and
validation/test rows that do not depend on `train_size`. Rows carry a `row` id, so splits are compared exactly."""

import re
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest

from src.data import TextClassificationDataModule
from src.data.splits import SplitPlan, draw_splits, stratified_folds
from src.utils.errors import UserInputError
from tests.fixtures import write_dataset, yelp_like_split

SPLITS = ("train", "validation", "test")


def raw(n_train: int = 200, n_test: int | None = None, n_validation: int | None = None) -> dict[str, datasets.Dataset]:
    def split(n: int, start: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"label": [i % 5 for i in range(n)], "text": ["x"] * n,
                                           "row": list(range(start, start + n))})
    splits = {"train": split(n_train, 0)}
    if n_test is not None:
        splits["test"] = split(n_test, 10_000)
    if n_validation is not None:
        splits["validation"] = split(n_validation, 20_000)
    return splits


def rows(dataset: dict[str, datasets.Dataset], names: tuple[str, ...] = SPLITS, **plan: Any) -> dict[str, list[int]]:
    return {name: list(split["row"]) for name, split in draw_splits(dataset, names, SplitPlan(**plan), "label").items()}


# ----- test carved from train ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("plan", "sizes"), [
    ({}, (160, 20, 20)),  # val_fraction 0.1 of 200 for each
    ({"val_fraction": 0.25}, (100, 50, 50)),
    ({"eval_size": 30}, (140, 30, 30)),
    ({"test_size": 7, "val_size": 12}, (181, 12, 7)),
    ({"test_size": 7, "eval_size": 30}, (163, 30, 7)),
    ({"train_size": 50}, (50, 20, 20)),
])
def test_without_a_test_split_test_is_carved_from_train(plan: dict, sizes: tuple[int, int, int]) -> None:
    """Train, validation and test are disjoint train rows of the given sizes; without train_size they are all of
    them; the same seed draws the same rows, another seed others."""
    drawn = rows(raw(), **plan)
    assert tuple(len(drawn[name]) for name in SPLITS) == sizes
    assert sum(len(set(r)) for r in drawn.values()) == len(set().union(*drawn.values())), "splits overlap"
    if "train_size" not in plan:
        assert sorted(r for split in drawn.values() for r in split) == list(range(200))
    assert rows(raw(), **plan) == drawn
    other = rows(raw(), **plan, seed=7)
    assert all(set(other[name]) != set(drawn[name]) for name in SPLITS)


def test_carved_test_is_the_tail_of_the_shuffle_and_validation_the_tail_before_it() -> None:
    order = list(raw()["train"].shuffle(seed=42)["row"])
    drawn = rows(raw(), test_size=10, val_size=20, train_size=30)
    assert drawn == {"test": order[190:], "validation": order[170:190], "train": order[:30]}


def test_with_a_test_split_train_keeps_the_test_rows() -> None:
    drawn = rows(raw(n_test=30))
    assert drawn["test"] == list(range(10_000, 10_030))
    assert len(drawn["validation"]) == 20 and len(drawn["train"]) == 180


@pytest.mark.parametrize("dataset", [raw(), raw(n_test=30), raw(n_validation=15)])
def test_validation_and_test_do_not_depend_on_train_size(dataset: dict[str, datasets.Dataset]) -> None:
    """What validate/test draw (without train_size rows) is what fit drew with its train_size."""
    fit = rows(dataset, train_size=60)
    for name in ("validation", "test"):
        assert rows(dataset, (name,), train_size=10_000) == {name: fit[name]}


def test_a_stage_reads_only_the_raw_splits_it_draws_from() -> None:
    class Recording(dict):
        def __init__(self, splits: dict[str, datasets.Dataset]) -> None:
            super().__init__(splits)
            self.read: set[str] = set()

        def __getitem__(self, name: str) -> datasets.Dataset:
            self.read.add(name)
            return super().__getitem__(name)

    with_test, without = Recording(raw(n_test=30)), Recording(raw())
    rows(with_test, ("test",))
    rows(without, ("test",))
    assert with_test.read == {"test"} and without.read == {"train"}


@pytest.mark.parametrize(("plan", "message"), [
    ({"test_size": 200}, "test size 200 leaves no training rows (train has 200)"),
    ({"test_size": 100, "val_size": 100}, "validation size 100 leaves no training rows (train has 100 after the "
                                          "100-row test carve)"),
    ({"test_size": 0}, "data.test_size=0 must be a positive integer"),
])
def test_carve_errors(plan: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=re.escape(message)):
        rows(raw(), **plan)


def test_data_module_never_tests_on_validation(tmp_path: Path, tiny_bert: Path) -> None:
    """A dataset without a test split: the data module's test split shares no row with validation or train."""
    dataset = write_dataset(tmp_path / "no_test", {"train": yelp_like_split(200, 0)})
    dm = TextClassificationDataModule(dataset=str(dataset), tokenizer_name_or_path=str(tiny_bert), max_length=128,
                                      test_size=25)
    dm.prepare_data()
    dm.setup("fit")
    ids = {name: Counter(map(tuple, dm.splits[name]["input_ids"])) for name in SPLITS}
    assert [ids[name].total() for name in SPLITS] == [155, 20, 25]
    assert not ids["test"] & ids["validation"] and not ids["test"] & ids["train"]


# ----- folds ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", [raw(203), raw(203, n_test=30)])
@pytest.mark.parametrize("num_folds", [2, 5])
def test_folds_partition_train_stratified(dataset: dict[str, datasets.Dataset], num_folds: int) -> None:
    """The K validation folds partition the train rows (after a test carve); each fold's train is the other rows;
    per-class counts differ by at most one across folds; the test split is the one without folds."""
    no_folds = rows(dataset)
    pool = set(no_folds["train"]) | set(no_folds["validation"])
    labels = dict(zip(dataset["train"]["row"], dataset["train"]["label"], strict=True))
    folds = [rows(dataset, num_folds=num_folds, fold=fold) for fold in range(num_folds)]
    assert sorted(r for drawn in folds for r in drawn["validation"]) == sorted(pool)
    for drawn in folds:
        assert not set(drawn["train"]) & set(drawn["validation"])
        assert set(drawn["train"]) | set(drawn["validation"]) == pool
        assert drawn["test"] == no_folds["test"]
    for label in range(5):
        per_fold = [sum(labels[r] == label for r in drawn["validation"]) for drawn in folds]
        assert max(per_fold) - min(per_fold) <= 1, per_fold
    sizes = [len(drawn["validation"]) for drawn in folds]
    assert max(sizes) - min(sizes) <= 1


def test_folds_are_seeded_and_train_size_applies() -> None:
    first = rows(raw(), num_folds=5, fold=2)
    assert rows(raw(), num_folds=5, fold=2) == first
    assert set(rows(raw(), num_folds=5, fold=2, seed=1)["validation"]) != set(first["validation"])
    subset = rows(raw(), num_folds=5, fold=2, train_size=50)
    assert subset["train"] == first["train"][:50] and subset["validation"] == first["validation"]


def test_stratified_folds_deals_each_class_round_robin() -> None:
    labels = np.array([1, 0, 1, 1, 0, 2, 1])
    assert stratified_folds(labels, 2).tolist() == [0, 0, 1, 0, 1, 0, 1]  # by label: 0 0 | 1 1 1 1 | 2


def test_folds_replace_a_validation_split() -> None:
    drawn = rows(raw(n_validation=15), num_folds=4, fold=0)  # 200 train rows - a 20-row test carve, in 4 folds
    assert len(drawn["validation"]) == 45 and max(drawn["validation"]) < 200


@pytest.mark.parametrize(("plan", "message"), [
    ({"num_folds": 5, "fold": 5}, "data.fold=5 is outside 0..4 (data.num_folds=5)"),
    ({"num_folds": 5, "fold": -1}, "data.fold=-1 is outside 0..4"),
    ({"num_folds": 1}, "data.num_folds=1 must be at least 2"),
    ({"fold": 2}, "data.fold=2 needs data.num_folds"),
])
def test_fold_setting_errors(plan: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=re.escape(message)):
        SplitPlan(**plan)


def test_more_folds_than_the_smallest_class() -> None:
    dataset = {"train": datasets.Dataset.from_dict({"label": [0] * 10 + [1] * 3, "text": ["x"] * 13,
                                                    "row": list(range(13))})}
    assert len(rows(dataset, ("validation",), num_folds=3)["validation"]) in (4, 5)
    with pytest.raises(UserInputError, match=re.escape("data.num_folds=4 is more than the 3 training rows of label 1")):
        rows(dataset, ("validation",), num_folds=4)


def test_data_module_folds_have_their_own_cache_entries(tmp_path: Path, tiny_yelp: Path, tiny_bert: Path) -> None:
    cache = tmp_path / "cache"
    for fold in (0, 1, 0):
        dm = TextClassificationDataModule(dataset=str(tiny_yelp), tokenizer_name_or_path=str(tiny_bert),
                                          max_length=128, num_folds=4, fold=fold, cache_dir=str(cache))
        dm.prepare_data()
        dm.setup("fit")
        assert len(dm.splits["validation"]) == 50 and len(dm.splits["train"]) == 150
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2
