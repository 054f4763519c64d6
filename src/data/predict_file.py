"""Reviews to predict from a file: `.txt` (one review a line), `.csv` or `.jsonl` / `.json` with a text column.

Read with the standard library, not `load_dataset`'s builders: pandas turns an empty CSV field into a null (and a
review "5" into an integer). Here every format gives strings, and an empty or null review is "" in all of them,
as an empty line is in a `.txt`: every input row gets a prediction.
"""

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import datasets

from src.utils.errors import UserInputError


def load_predict_file(file: str, text_column: str) -> datasets.Dataset:
    """The file's reviews, in file order, as a one-column dataset (`text_column`)."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise UserInputError(f"predict file '{path}' does not exist")
    reader = READERS.get(path.suffix)
    if reader is None:
        raise UserInputError(f"predict file '{path}' must end in {', '.join(READERS)}")
    try:
        content = path.read_bytes().decode("utf-8-sig")  # -sig: also without the BOM spreadsheet exports add
    except UnicodeDecodeError as err:
        raise UserInputError(f"predict file '{path}' is not UTF-8 text (byte 0x{err.object[err.start]:02x} at "
                             f"offset {err.start}): save it as UTF-8") from None
    texts = reader(content, path, text_column)
    if not texts:
        raise UserInputError(f"predict file '{path}' has no reviews")
    features = datasets.Features({text_column: datasets.Value("string")})
    return datasets.Dataset.from_dict({text_column: texts}, features=features)


def _read_txt(content: str, path: Path, text_column: str) -> list[str]:
    return [line.removesuffix("\n") for line in io.StringIO(content, newline=None)]  # \n, \r\n or \r


def _read_csv(content: str, path: Path, text_column: str) -> list[str]:
    rows = csv.DictReader(io.StringIO(content, newline=""))
    if rows.fieldnames is not None and text_column not in rows.fieldnames:
        _no_text_column(path, text_column, rows.fieldnames)
    return [row[text_column] or "" for row in rows]  # None: a row with fewer fields than the header


def _read_json(content: str, path: Path, text_column: str) -> list[str]:
    """JSON lines; for `.json` also one JSON array of objects."""
    try:
        if path.suffix == ".json" and content.lstrip().startswith("["):
            records = list(enumerate(json.loads(content), start=1))
        else:  # not splitlines(): a JSON string may hold a raw U+2028
            records = [(n, json.loads(line)) for n, line in enumerate(content.split("\n"), start=1) if line.strip()]
    except json.JSONDecodeError as err:
        raise UserInputError(f"predict file '{path}' is not valid JSON ({err}): write one JSON object a line") \
            from None
    for n, record in records:
        if not isinstance(record, dict):
            raise UserInputError(f"predict file '{path}' record {n} is not a JSON object: write one "
                                 f'{{"{text_column}": "..."}} a line')
    if records and not any(text_column in record for _, record in records):
        _no_text_column(path, text_column, sorted({key for _, record in records for key in record}))
    texts = []
    for n, record in records:
        text = record.get(text_column)
        if text is not None and not isinstance(text, str):
            raise UserInputError(f"predict file '{path}' record {n}: '{text_column}' is {json.dumps(text)[:40]}, "
                                 "expected a string")
        texts.append(text or "")
    return texts


def _no_text_column(path: Path, text_column: str, columns: list[str]) -> None:
    raise UserInputError(f"predict file '{path}' has no text column '{text_column}' (columns: {columns}): "
                         "set --data.text_column")


READERS: dict[str, Callable[[str, Path, str], list[str]]] = {
    ".txt": _read_txt, ".csv": _read_csv, ".jsonl": _read_json, ".json": _read_json,
}
