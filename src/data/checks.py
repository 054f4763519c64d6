"""Open the user's dataset and reject data that would train or evaluate wrongly, in one line naming the fix.

Checks read whole raw splits (Arrow metadata and one pass over the label column), before any rows are drawn,
and only the raw splits the running stage draws from (`CheckedSplits`).
"""

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from src.utils.errors import UserInputError


def load_raw(source: str) -> datasets.DatasetDict:
    """`load_dataset(source)` for a hub id or a local dir / data files, with its failures as one-line errors."""
    looks_local = source.startswith(("/", "./", "../", "~")) or Path(source).exists()
    if looks_local and not Path(source).expanduser().exists():
        raise UserInputError(f"dataset path '{source}' does not exist: pass an existing dir or a hub id")
    try:
        raw = datasets.load_dataset(str(Path(source).expanduser()) if looks_local else source)
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise UserInputError(
            f"could not load dataset '{source}': the Hugging Face Hub is unreachable or has no such dataset "
            f"({type(err).__name__}). Save it to a local dir where the hub is reachable and pass "
            "--data.dataset DIR (a dir with data/train-*.parquet, data/test-*.parquet; HF_HUB_OFFLINE=1 skips "
            "the connection retries)"
        ) from None
    except FileNotFoundError as err:
        raise UserInputError(f"could not load dataset '{source}': {err}") from None
    except ValueError as err:  # datasets: 'Instruction "test" corresponds to no data!' for an empty split file
        empty = re.search(r'Instruction "(\w+)" corresponds to no data', str(err))
        if empty is None:
            raise UserInputError(f"could not load dataset '{source}': {err}") from None
        raise UserInputError(f"split '{empty.group(1)}' of dataset '{source}' is empty: check its data files") \
            from None
    if "train" not in raw:
        raise UserInputError(f"dataset '{source}' has no 'train' split (found: {sorted(raw)})")
    return raw


def check_positive(**settings: int | None) -> None:
    """Each `data.<name>` that is set must be a positive integer."""
    for name, value in settings.items():
        if value is not None and value <= 0:
            raise UserInputError(f"data.{name}={value} must be a positive integer")


def check_split(split: datasets.Dataset, name: str, text_column: str, label_column: str | None,
                num_labels: int) -> None:
    """Every row of `split` (a raw split, read without a copy): text present, labels integers in 0..num_labels-1.
    `label_column=None` checks the text only (prediction inputs)."""
    if len(split) == 0:
        raise UserInputError(f"split '{name}' is empty: check the dataset files or the subset sizes")
    for kind, column in (("text", text_column), ("label", label_column)):
        if column is not None and column not in split.column_names:
            raise UserInputError(
                f"split '{name}' has no {kind} column '{column}' (columns: {split.column_names}): "
                f"set --data.{kind}_column"
            )
    table = split.data
    if (nulls := table.column(text_column).null_count) > 0:
        raise UserInputError(f"split '{name}' has {nulls} null values in text column '{text_column}': "
                             "drop or fill them")
    if label_column is None:
        return
    labels = table.column(label_column)
    if not pa.types.is_integer(labels.type):
        raise UserInputError(
            f"label column '{label_column}' in split '{name}' has type {labels.type}, expected integers "
            f"0..{num_labels - 1}: map your labels to class ids first"
        )
    if labels.null_count > 0:
        raise UserInputError(f"split '{name}' has {labels.null_count} null labels in column '{label_column}'")
    bounds = pc.min_max(labels).as_py()
    for bound in (bounds["min"], bounds["max"]):
        if not 0 <= bound < num_labels:
            raise UserInputError(
                f"label {bound} in split '{name}' is outside 0..{num_labels - 1} (num_labels={num_labels}): "
                "fix the data or set --data.num_labels"
            )
    feature = split.features.get(label_column)
    if isinstance(feature, datasets.ClassLabel) and feature.num_classes != num_labels:
        raise UserInputError(
            f"dataset declares {feature.num_classes} classes in '{label_column}' but num_labels={num_labels}: "
            f"set --data.num_labels {feature.num_classes}"
        )


class CheckedSplits(Mapping[str, datasets.Dataset]):
    """The raw splits, each checked the first time it is read: a stage checks exactly the splits it draws from
    (`test` on a dataset with a test file never reads, nor checks, train)."""

    def __init__(self, raw: datasets.DatasetDict, check: Callable[[datasets.Dataset, str], None]) -> None:
        self._raw, self._check, self._checked = raw, check, set()

    def __getitem__(self, name: str) -> datasets.Dataset:
        split = self._raw[name]
        if name not in self._checked:
            self._check(split, name)
            self._checked.add(name)
        return split

    def __contains__(self, name: object) -> bool:  # Mapping's default would read (and check) the split
        return name in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)
