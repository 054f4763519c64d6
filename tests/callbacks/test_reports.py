"""TensorBoard reports read back from the event files: confusion matrices, per-class scalars, texts, HPARAMS."""

import io
import re
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from src.callbacks.eval_report import EvalReport
from src.callbacks.run_report import RunReport
from src.data import TextClassificationDataModule
from src.model import SequenceClassifier
from src.utils.confusion import confusion_image, confusion_markdown, precision_recall
from src.utils.summary import format_table, print_run_summary
from tests.cli_helpers import scalars

NAMES = ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]


@pytest.fixture(scope="module")
def reported_run(tiny_bert: Path, tiny_yelp: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny fit (2 epochs), a test of its best checkpoint and a predict; returns the run dir and printed summary."""
    root = tmp_path_factory.mktemp("reporting")
    pl.seed_everything(0)
    model = SequenceClassifier(str(tiny_bert), optimizer=partial(torch.optim.AdamW, lr=1e-3))
    data = TextClassificationDataModule(str(tiny_yelp), str(tiny_bert), max_length=64, batch_size=8, train_size=40,
                                eval_size=20, cache_dir=str(root / "cache"))
    checkpoint = ModelCheckpoint(monitor="val/acc", mode="max")
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, logger=TensorBoardLogger(root / "logs", name="exp", default_hp_metric=False),
        callbacks=[checkpoint, EvalReport(), RunReport()], enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, num_sanity_val_steps=1,
    )
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, ckpt_path="best", verbose=False)
    out = io.StringIO()
    print_run_summary(trainer, export_path="exports/x", file=out)
    # a later predict into the same run directory (the logger settings of configs/defaults.yaml)
    predictor = pl.Trainer(accelerator="cpu", logger=TensorBoardLogger(root / "logs", name="exp", version=0,
                                                                     default_hp_metric=False),
                           callbacks=[RunReport()], enable_progress_bar=False)
    predictor.predict(model, datamodule=data, return_predictions=False)
    return Path(trainer.log_dir), out.getvalue()


def accumulator(run_dir: Path) -> EventAccumulator:
    """All event files of the run (fit and test write one each), read in order as TensorBoard reads a run."""
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def text(acc: EventAccumulator, tag: str) -> list[str]:
    return [event.tensor_proto.string_val[0].decode() for event in acc.Tensors(f"{tag}/text_summary")]


def parse_markdown_matrix(markdown: str) -> torch.Tensor:
    rows = [line for line in markdown.splitlines() if line.startswith("| **")]
    return torch.tensor([[int(v) for v in row.split("|")[2:-2]] for row in rows])


def test_confusion_matrix_images_and_tables(reported_run: tuple[Path, str]) -> None:
    run_dir, _ = reported_run
    acc = accumulator(run_dir)
    assert len(acc.Images("val/confusion_matrix")) == 2  # one per epoch, none from the sanity check
    (test_image,) = acc.Images("test/confusion_matrix")
    image = np.asarray(Image.open(io.BytesIO(test_image.encoded_image_string)))
    assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) > 100

    val_tables, (test_table,) = text(acc, "val/confusion_matrix"), text(acc, "test/confusion_matrix")
    assert len(val_tables) == 2
    logged = scalars(run_dir)
    for table, stage, rows in ((val_tables[-1], "val", 20), (test_table, "test", 20)):
        matrix = parse_markdown_matrix(table)
        assert matrix.shape == (5, 5) and int(matrix.sum()) == rows  # every eval row counted once
        # the matrix agrees with the module's own accuracy metric
        assert float(matrix.diagonal().sum()) / rows == pytest.approx(logged[f"{stage}/acc"][-1], abs=1e-6)
        precision, recall = precision_recall(matrix)
        for i, name in enumerate(NAMES):
            assert logged[f"{stage}/precision/{name}"][-1] == pytest.approx(float(precision[i]), abs=1e-6)
            assert logged[f"{stage}/recall/{name}"][-1] == pytest.approx(float(recall[i]), abs=1e-6)
    assert len(logged["val/precision/1 star"]) == 2 and len(logged["test/recall/5 stars"]) == 1


def test_run_summary_text_and_best_score(reported_run: tuple[Path, str]) -> None:
    run_dir, _ = reported_run
    (summary,) = text(accumulator(run_dir), "run/summary")
    for fact in ("model", "parameters", "rows per split", "versions", "git commit", "run directory"):
        assert f"| {fact} |" in summary
    assert "train 40, validation 20, test 20" in summary and "lightning " in summary
    logged = scalars(run_dir)
    assert logged["val/acc_best"] == [max(logged["val/acc"][: i + 1]) for i in range(2)]


def test_hparams_tab_has_real_metrics_not_the_placeholder(reported_run: tuple[Path, str]) -> None:
    run_dir, _ = reported_run
    acc = accumulator(run_dir)
    content = acc.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = [info.name.tag for info in experiment.metric_infos]
    assert metric_tags == ["val/acc_best", "val/acc", "val/loss", "test/acc", "test/f1_macro"]
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["train_size"].number_value == 40  # the data module's hparams too
    assert "hp_metric" not in scalars(run_dir)  # Lightning's -1 placeholder was never written, not even by predict
    logged = scalars(run_dir)
    assert all(tag in logged for tag in metric_tags)  # each declared metric has values to show


def test_print_run_summary(reported_run: tuple[Path, str]) -> None:
    run_dir, printed = reported_run
    logged = scalars(run_dir)
    assert re.search(rf"\| best val/acc +\| {max(logged['val/acc']):.4f} +\|", printed)
    assert re.search(rf"\| test/acc +\| {logged['test/acc'][-1]:.4f} +\|", printed)
    assert f"| run directory   | {run_dir}" in printed and "| export " in printed
    assert re.search(r"\| best checkpoint \| \S+\.ckpt", printed)
    widths = {len(line) for line in printed.strip().splitlines()}
    assert len(widths) == 1  # a closed box


def test_confusion_helpers_on_edge_cases() -> None:
    matrix = torch.tensor([[3, 0, 1], [0, 0, 0], [2, 0, 4]])  # class 1 never present nor predicted
    precision, recall = precision_recall(matrix)
    torch.testing.assert_close(precision, torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64))
    torch.testing.assert_close(recall, torch.tensor([0.75, 0.0, 4 / 6], dtype=torch.float64))
    assert parse_markdown_matrix(confusion_markdown(matrix, ["a", "b", "c"])).tolist() == matrix.tolist()
    for n in (2, 5, 40):  # cells shrink and counts are dropped for many classes; never an error
        image = confusion_image(torch.randint(0, 9, (n, n)), [f"class {i}" for i in range(n)])
        assert image.dtype == np.uint8 and image.shape[2] == 3
    assert format_table([("a", "1")], title="T").splitlines()[1] == "| T     |"
