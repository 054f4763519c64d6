"""Prediction files (`src.data.predict_file`): .txt, .csv and .jsonl treated alike, empty reviews included, and a
file that is not UTF-8 refused in one line."""

import csv
import json
import re
from pathlib import Path

import pytest

from src.data import TextClassificationDataModule
from src.data.predict_file import load_predict_file
from src.utils.errors import UserInputError

REVIEWS = ["superb food", "", "awful service, the table was not clean", "", "okay"]
SUFFIXES = [".txt", ".csv", ".jsonl"]


def write(path: Path, reviews: list[str]) -> Path:
    if path.suffix == ".txt":
        path.write_text("".join(f"{review}\n" for review in reviews), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)  # "" and None: an empty field, which pandas (so load_dataset) reads as null
            writer.writerow(["id", "text"])
            writer.writerows((i, review) for i, review in enumerate(reviews))
    else:
        lines = (json.dumps({"id": i, "text": review}, ensure_ascii=False) + "\n" for i, review in enumerate(reviews))
        path.write_text("".join(lines), encoding="utf-8")
    return path


def texts(path: Path) -> list[str]:
    return list(load_predict_file(str(path), "text")["text"])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_empty_reviews_are_kept_in_every_format(suffix: str, tmp_path: Path, tiny_yelp: Path,
                                                tiny_bert: Path) -> None:
    """Empty reviews are "" rows in file order, tokenized as [CLS] [SEP] and predicted like any other."""
    path = write(tmp_path / f"reviews{suffix}", REVIEWS)
    dm = TextClassificationDataModule(dataset=str(tiny_yelp), tokenizer_name_or_path=str(tiny_bert), max_length=64,
                                      predict_file=str(path))
    dm.prepare_data()
    dm.setup("predict")
    assert dm.predict_texts() == REVIEWS
    lengths = dict(zip(dm.splits["predict"]["idx"], dm.splits["predict"]["length"], strict=True))
    assert [lengths[i] for i in (1, 3)] == [2, 2]
    assert sorted(i for batch in dm.predict_dataloader() for i in batch["idx"].tolist()) == list(range(5))


@pytest.mark.parametrize(("name", "content"), [
    ("reviews.csv", 'id,text\n0,good\n1,\n2,""\n3\n4,okay\n'),  # empty field, quoted empty, short row
    ("reviews.jsonl", '{"text": "good"}\n{"text": null}\n{"text": ""}\n{"id": 3}\n{"text": "okay"}\n'),
])
def test_null_reviews_are_empty_reviews(name: str, content: str, tmp_path: Path) -> None:
    """A null or missing text is an empty review, as an empty .txt line is: every row gets a prediction."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert texts(path) == ["good", "", "", "", "okay"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_not_utf8_is_one_line_naming_the_file_and_the_fix(suffix: str, tmp_path: Path) -> None:
    path = write(tmp_path / f"reviews{suffix}", ["good", "caf\N{LATIN SMALL LETTER E WITH ACUTE}"])
    path.write_bytes(path.read_bytes().replace("é".encode(), "é".encode("latin-1")))
    with pytest.raises(UserInputError) as error:
        load_predict_file(str(path), "text")
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert re.search(r"not UTF-8 .*byte 0xe9.*save it as UTF-8", message), message


def test_utf8_with_bom_and_crlf(tmp_path: Path) -> None:
    """Spreadsheet exports: a byte-order mark and Windows line ends change nothing."""
    path = tmp_path / "reviews.csv"
    path.write_bytes("\ufefftext,id\r\ngood,1\r\n\"two\r\nlines\",2\r\n".encode())
    assert texts(path) == ["good", "two\r\nlines"]
    txt = tmp_path / "reviews.txt"
    txt.write_bytes(b"good\r\n\r\nokay\r\n")
    assert texts(txt) == ["good", "", "okay"]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("reviews.jsonl", '{"text": "good"}\n{"text": \n', "is not valid JSON"),
    ("reviews.jsonl", '["good"]\n', "record 1 is not a JSON object"),
    ("reviews.jsonl", '{"text": 5}\n', "record 1: 'text' is 5, expected a string"),
    ("reviews.jsonl", '{"review": "good"}\n', "no text column 'text'"),
    ("reviews.txt", "", "has no reviews"),
])
def test_bad_predict_files(name: str, content: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserInputError, match=re.escape(message)):
        load_predict_file(str(path), "text")


def test_json_array(tmp_path: Path) -> None:
    path = tmp_path / "reviews.json"
    path.write_text(json.dumps([{"text": "good"}, {"text": None}, {"text": "okay"}]))
    assert texts(path) == ["good", "", "okay"]
