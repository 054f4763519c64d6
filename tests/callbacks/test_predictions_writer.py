"""`PredictionsWriter`: one file per predict run, every row once in input order, also under 2-process DDP."""

import csv
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from src.callbacks.predictions_writer import PredictionsWriter
from src.data import TextClassificationDataModule
from src.model import SequenceClassifier
from tests.cli_helpers import run_cli, tiny_run_args

NAMES = ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]  # the model's default id2label


@pytest.fixture(scope="module")
def checkpoint(tiny_bert: Path, tiny_yelp: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of one tiny CLI fit (1 epoch)."""
    workdir = tmp_path_factory.mktemp("predict_fit")
    result = run_cli(["fit", *tiny_run_args(tiny_bert, tiny_yelp, "--trainer.max_epochs", "1")], cwd=workdir)
    run_dir = workdir / re.search(r"Run directory: (\S+)", result.stdout).group(1)
    return run_dir / "checkpoints" / "last.ckpt"


def predict(checkpoint: Path, tiny_bert: Path, tiny_yelp: Path, *extra: str) -> Path:
    """Run `predict` through the CLI; returns the predictions file it reported."""
    args = ["predict", *tiny_run_args(tiny_bert, tiny_yelp, "--ckpt_path", str(checkpoint), *extra)]
    result = run_cli(args, cwd=checkpoint.parents[4])
    paths = re.findall(r"Predictions \(\d+ rows\): (\S+)", result.stdout)
    assert len(paths) == 1, result.stdout[-2000:]  # one file, from rank 0 only
    path = Path(paths[0])
    return path if path.is_absolute() else checkpoint.parents[4] / path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_rows(rows: list[dict], texts: list[str]) -> None:
    assert [row["idx"] for row in rows] == list(range(len(texts)))  # every row once, in input order
    assert [row["text"] for row in rows] == texts
    for row in rows:
        probs = [row[f"prob_{name}"] for name in NAMES]
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-5)
        assert row["pred_label"] == max(range(len(probs)), key=probs.__getitem__)
        assert row["pred_name"] == NAMES[row["pred_label"]]


def test_predict_test_split_writes_rows_in_input_order(checkpoint: Path, tiny_bert: Path, tiny_yelp: Path) -> None:
    path = predict(checkpoint, tiny_bert, tiny_yelp)
    # an eval run of its own inside the checkpoint's run directory
    assert path.parent.parent == checkpoint.parents[1] / "eval" and path.parent.name.startswith("predict_")
    assert path.name == "predictions.jsonl" and (path.parent / "config.yaml").is_file()
    data = TextClassificationDataModule(dataset=str(tiny_yelp), tokenizer_name_or_path=str(tiny_bert), max_length=64,
                                train_size=80, eval_size=41)
    data.prepare_data()
    data.setup("predict")
    texts = data.predict_texts()
    assert len(texts) == 41
    check_rows(read_jsonl(path), texts)


@pytest.mark.slow
def test_predict_file_single_process_and_ddp_agree(
    checkpoint: Path, tiny_bert: Path, tiny_yelp: Path, tmp_path: Path
) -> None:
    texts = [f"the food was {word} and the staff {word}" for word in ("superb", "awful", "okay")] * 3 + \
        ["good", "poor service and not very good food we waited a long time", "the room was superb"]
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("\n".join(texts) + "\n")

    single = predict(checkpoint, tiny_bert, tiny_yelp, "--data.predict_file", str(reviews))
    single_bytes = single.read_bytes()
    rows = read_jsonl(single)
    check_rows(rows, texts)

    # the probabilities are the model's for each text: a plain forward pass agrees row by row
    module = SequenceClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    data = TextClassificationDataModule(tokenizer_name_or_path=str(tiny_bert), max_length=64)
    with torch.no_grad():
        expected = module(dict(data.tokenizer(texts, padding=True, truncation=True, max_length=64,
                                              return_tensors="pt"))).softmax(-1)
    actual = torch.tensor([[row[f"prob_{name}"] for name in NAMES] for row in rows])
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)

    ddp = predict(checkpoint, tiny_bert, tiny_yelp, "--data.predict_file", str(reviews),
                  "--trainer.strategy", "ddp", "--trainer.devices", "2")
    assert ddp.parent != single.parent and ddp.name == single.name  # a new eval run beside the first one
    assert single.read_bytes() == single_bytes  # never overwritten
    ddp_rows = read_jsonl(ddp)
    check_rows(ddp_rows, texts)
    for a, b in zip(rows, ddp_rows, strict=True):  # other batches on 2 ranks: same up to float rounding
        assert {k: v for k, v in a.items() if not k.startswith("prob_")} == \
            {k: v for k, v in b.items() if not k.startswith("prob_")}
        assert [a[f"prob_{n}"] for n in NAMES] == pytest.approx([b[f"prob_{n}"] for n in NAMES], abs=1e-6)


def fake_run(tmp_path: Path, texts: list[str] | None) -> tuple[SimpleNamespace, SimpleNamespace]:
    datamodule = SimpleNamespace(predict_texts=lambda: texts) if texts is not None else None
    trainer = SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path), world_size=1,
                              is_global_zero=True, datamodule=datamodule)
    config = SimpleNamespace(id2label={0: "neg", 1: "pos"})
    return trainer, SimpleNamespace(model=SimpleNamespace(config=config))


def batch(idx: list[int], probs: list[list[float]]) -> dict[str, torch.Tensor]:
    p = torch.tensor(probs)
    return {"idx": torch.tensor(idx), "label": p.argmax(-1), "probs": p}


def test_csv_output_is_sorted_and_never_overwrites(tmp_path: Path) -> None:
    trainer, module = fake_run(tmp_path, ["a", "b, with a comma", "c\nnewline"])
    batches = [batch([2, 0], [[0.9, 0.1], [0.25, 0.75]]), batch([1], [[0.5, 0.5]])]  # as length-sorted batches come
    writer = PredictionsWriter(output_format="csv")
    writer.write_on_epoch_end(trainer, module, batches, [])
    first = writer.path
    assert first == tmp_path / "predictions.csv"
    with first.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["idx"] for r in rows] == ["0", "1", "2"]
    assert [r["text"] for r in rows] == ["a", "b, with a comma", "c\nnewline"]
    assert [r["pred_name"] for r in rows] == ["pos", "neg", "neg"]
    assert rows[0]["prob_pos"] == "0.75"
    writer.write_on_epoch_end(trainer, module, batches, [])
    assert writer.path == tmp_path / "predictions-1.csv" and first.read_text().count("\n") >= 4
    assert not list(tmp_path.glob(".predictions-*"))  # the temporary file is gone


def test_missing_or_repeated_rows_are_an_error(tmp_path: Path) -> None:
    trainer, module = fake_run(tmp_path, ["a", "b", "c"])
    with pytest.raises(RuntimeError, match="exactly once"):
        PredictionsWriter().write_on_epoch_end(trainer, module, [batch([0, 2, 2], [[1.0, 0.0]] * 3)], [])
    trainer, module = fake_run(tmp_path, None)  # no texts known: rows must still be 0..n-1
    writer = PredictionsWriter()
    writer.write_on_epoch_end(trainer, module, [batch([1, 0], [[0.2, 0.8], [0.6, 0.4]])], [])
    assert [set(r) for r in read_jsonl(writer.path)] == [{"idx", "pred_label", "pred_name", "prob_neg", "prob_pos"}] * 2
    assert list(tmp_path.glob("predictions*.jsonl")) == [writer.path]  # the failed run wrote nothing
