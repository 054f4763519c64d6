"""Which rows are train, validation and test: seeded, and the same whichever command asks for them.

The draw (the HF tutorial's, extended): shuffle the train split with `seed`; a dataset without a test split gives
the tail of that order to test; validation is the validation split, or the tail of what is left, or, with
`num_folds`, one fold of a label-stratified partition of what is left; `train_size` then takes the first rows of
the rest. Validation and test never depend on `train_size`, so `validate` and `test` see the rows `fit` saw
without needing `train_size` rows, and each split is drawn only when asked for (a `test` on a dataset with a test
split never reads train).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import datasets
import numpy as np

from src.data.checks import check_positive
from src.utils.errors import UserInputError


@dataclass(frozen=True)
class SplitPlan:
    """The `data.*` settings that decide the draw; see `TextClassificationDataModule` for their meaning."""

    seed: int = 42
    train_size: int | None = None
    eval_size: int | None = None
    val_size: int | None = None
    val_fraction: float = 0.1
    test_size: int | None = None
    num_folds: int | None = None
    fold: int = 0

    def __post_init__(self) -> None:
        check_positive(train_size=self.train_size, eval_size=self.eval_size, val_size=self.val_size,
                       test_size=self.test_size)
        if not 0 < self.val_fraction < 1:
            raise UserInputError(f"data.val_fraction={self.val_fraction} must be between 0 and 1")
        if self.num_folds is None:
            if self.fold != 0:
                raise UserInputError(f"data.fold={self.fold} needs data.num_folds (the number of folds)")
        elif self.num_folds < 2:
            raise UserInputError(f"data.num_folds={self.num_folds} must be at least 2 (null: no folds)")
        elif not 0 <= self.fold < self.num_folds:
            raise UserInputError(f"data.fold={self.fold} is outside 0..{self.num_folds - 1} "
                                 f"(data.num_folds={self.num_folds})")


def draw_splits(raw: Mapping[str, datasets.Dataset], names: Iterable[str], plan: SplitPlan,
                label_column: str) -> dict[str, datasets.Dataset]:
    """The splits `names` (of train, validation, test) of the raw dataset `raw`, drawn by `plan`."""
    draw = _Draw(raw, plan, label_column)
    return {name: getattr(draw, name) for name in names}


def stratified_folds(labels: np.ndarray, num_folds: int) -> np.ndarray:
    """The fold of each row: rows sorted by label (stably, so in their given order within a class) are dealt to
    the folds in turn, so per-class counts, and fold sizes, differ by at most one across folds."""
    folds = np.empty(len(labels), dtype=np.int64)
    folds[np.argsort(labels, kind="stable")] = np.arange(len(labels)) % num_folds
    return folds


class _Draw:
    """One draw; each property reads (and so checks) only the raw splits it comes from."""

    def __init__(self, raw: Mapping[str, datasets.Dataset], plan: SplitPlan, label_column: str) -> None:
        self.raw, self.plan, self.label_column = raw, plan, label_column

    @cached_property
    def shuffled(self) -> datasets.Dataset:
        return self.raw["train"].shuffle(seed=self.plan.seed)

    def _carve_size(self, size: int | None) -> int:
        """Rows to carve from train: the split's own size, else `eval_size`, else `val_fraction` of train."""
        fraction = max(1, round(self.plan.val_fraction * len(self.shuffled)))
        return next((n for n in (size, self.plan.eval_size) if n is not None), fraction)

    @cached_property
    def test(self) -> datasets.Dataset:
        if "test" in self.raw:
            return _subset(self.raw["test"], self.plan.eval_size, self.plan.seed, "test")
        n, n_test = len(self.shuffled), self._carve_size(self.plan.test_size)
        if n_test >= n:
            raise UserInputError(f"test size {n_test} leaves no training rows (train has {n})")
        return self.shuffled.select(range(n - n_test, n))

    @cached_property
    def pool(self) -> datasets.Dataset:
        """Train rows left for train and validation once the test carve is gone."""
        if "test" in self.raw:
            return self.shuffled
        return self.shuffled.select(range(len(self.shuffled) - len(self.test)))

    @cached_property
    def folds(self) -> np.ndarray | None:
        if self.plan.num_folds is None:
            return None
        labels = self.pool.select_columns([self.label_column]).with_format("numpy")[:][self.label_column]
        values, counts = np.unique(labels, return_counts=True)
        if self.plan.num_folds > counts.min():
            raise UserInputError(
                f"data.num_folds={self.plan.num_folds} is more than the {counts.min()} training rows of label "
                f"{values[counts.argmin()]}: every fold needs every class, lower data.num_folds"
            )
        return stratified_folds(labels, self.plan.num_folds)

    @cached_property
    def n_val(self) -> int:
        """Rows carved from the tail of the pool for validation (no validation split, no folds)."""
        n_val = self._carve_size(self.plan.val_size)
        if n_val >= len(self.pool):
            after = "" if "test" in self.raw else f" after the {len(self.test)}-row test carve"
            raise UserInputError(f"validation size {n_val} leaves no training rows (train has {len(self.pool)}"
                                 f"{after})")
        return n_val

    @cached_property
    def validation(self) -> datasets.Dataset:
        if self.folds is not None:
            return self.pool.select(np.flatnonzero(self.folds == self.plan.fold))
        if "validation" in self.raw:
            return _subset(self.raw["validation"], self.plan.eval_size, self.plan.seed, "validation")
        n = len(self.pool)
        return self.pool.select(range(n - self.n_val, n))

    @cached_property
    def train(self) -> datasets.Dataset:
        if self.folds is not None:
            rest = self.pool.select(np.flatnonzero(self.folds != self.plan.fold))
        elif "validation" in self.raw:
            rest = self.pool
        else:
            rest = self.pool.select(range(len(self.pool) - self.n_val))
        return _first(rest, self.plan.train_size, "train")


def _subset(split: datasets.Dataset, size: int | None, seed: int, name: str) -> datasets.Dataset:
    """`size` rows of a split drawn after a shuffle with `seed` (the split as it is for None)."""
    return split if size is None else _first(split.shuffle(seed=seed), size, name)


def _first(split: datasets.Dataset, size: int | None, name: str) -> datasets.Dataset:
    """The first `size` rows of an already shuffled split (all of it for None)."""
    if size is None:
        return split
    if size > len(split):
        raise UserInputError(f"requested {size} rows from split '{name}' which has {len(split)}")
    return split.select(range(size))
