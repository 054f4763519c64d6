"""What each command loads: `validate`, `test` and `predict` draw, check and tokenize only the splits they use;
predictions keep their texts; the train sampler's position in checkpoints counts consumed batches."""

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from src.cli import main
from src.data import TextClassificationDataModule, datamodule
from src.utils.errors import UserInputError
from tests.cli_helpers import REPO, tiny_run_args
from tests.fixtures import write_dataset, yelp_like_split


def make_dm(dataset: Path, tokenizer_dir: Path, **kwargs: Any) -> TextClassificationDataModule:
    kwargs.setdefault("max_length", 64)
    return TextClassificationDataModule(dataset=str(dataset), tokenizer_name_or_path=str(tokenizer_dir), **kwargs)


def run_stage(dm: TextClassificationDataModule, fn: TrainerFn) -> TextClassificationDataModule:
    """prepare_data + setup as a Trainer running `fn` calls them (the data module reads `trainer.state.fn`)."""
    dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=fn), global_rank=0, world_size=1, accelerator=None,
                                 training=False)
    dm.prepare_data()
    dm.setup(fn.value)
    return dm


STAGES = [(TrainerFn.FITTING, {"train", "validation", "test"}), (TrainerFn.VALIDATING, {"validation"}),
          (TrainerFn.TESTING, {"test"}), (TrainerFn.PREDICTING, {"test"})]


@pytest.mark.parametrize(("fn", "names"), STAGES)
def test_each_command_tokenizes_only_its_splits(fn: TrainerFn, names: set[str], tiny_yelp: Path, tiny_bert: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    tokenized: list[set[str]] = []
    tokenize = datamodule.tokenize_splits

    def recording(sources: dict, *args: Any, **kwargs: Any) -> datasets.DatasetDict:
        tokenized.append(set(sources))
        return tokenize(sources, *args, **kwargs)

    monkeypatch.setattr(datamodule, "tokenize_splits", recording)
    dm = run_stage(make_dm(tiny_yelp, tiny_bert, train_size=80, eval_size=41), fn)
    assert tokenized == [names] and set(dm.splits) == names


def test_test_after_fit_reuses_the_fit_entry(tiny_yelp: Path, tiny_bert: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`fit --test_after_fit`: the same instance tests on the test split fit tokenized, with no new cache entry."""
    dm = run_stage(make_dm(tiny_yelp, tiny_bert, train_size=80, eval_size=41), TrainerFn.FITTING)
    test_ids = dm.splits["test"].data.column("input_ids").to_pylist()

    def must_not_tokenize(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("tokenized again")

    monkeypatch.setattr(datamodule, "tokenize_splits", must_not_tokenize)
    run_stage(dm, TrainerFn.TESTING)
    assert dm.splits["test"].data.column("input_ids").to_pylist() == test_ids
    assert len(list(dm.cache_root.iterdir())) == 1


@pytest.mark.parametrize("fn", [TrainerFn.VALIDATING, TrainerFn.TESTING, TrainerFn.PREDICTING])
def test_evaluation_does_not_need_train_size_rows(fn: TrainerFn, tiny_yelp: Path, tiny_bert: Path) -> None:
    """train_size=1000 on a 200-row train split: fit refuses, validate/test/predict run on the rows fit would
    have evaluated on (the carve does not depend on train_size)."""
    with pytest.raises(UserInputError, match="requested 1000 rows from split 'train' which has"):
        run_stage(make_dm(tiny_yelp, tiny_bert, train_size=1000), TrainerFn.FITTING)
    evaluated = run_stage(make_dm(tiny_yelp, tiny_bert, train_size=1000, eval_size=30), fn)
    fitted = run_stage(make_dm(tiny_yelp, tiny_bert, train_size=100, eval_size=30), TrainerFn.FITTING)
    if fn == TrainerFn.VALIDATING:
        assert evaluated.splits["validation"]["input_ids"][:] == fitted.splits["validation"]["input_ids"][:]
    else:
        assert len(evaluated.splits["test"]) == 30


def test_test_checks_only_the_test_split(tmp_path: Path, tiny_bert: Path) -> None:
    """Bad labels in train stop fit, not test on a valid test split."""
    bad_train = yelp_like_split(40, 0).cast_column("label", datasets.Value("int64")).map(lambda row: {"label": 9})
    dataset = write_dataset(tmp_path / "ds", {"train": bad_train, "test": yelp_like_split(20, 1)})
    with pytest.raises(UserInputError, match="label 9 in split 'train'"):
        run_stage(make_dm(dataset, tiny_bert), TrainerFn.FITTING)
    assert len(run_stage(make_dm(dataset, tiny_bert), TrainerFn.TESTING).splits["test"]) == 20


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_cli_evaluates_a_dataset_smaller_than_train_size(subcommand: str, tmp_path: Path, tiny_bert: Path,
                                                         tiny_yelp: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's command: the tutorial config (train_size 1000) on a dataset with fewer train rows."""
    monkeypatch.chdir(tmp_path)
    main([subcommand, *tiny_run_args(tiny_bert, tiny_yelp, "--data.train_size", "1000")])  # 200 train rows
    assert ("val/acc" if subcommand == "validate" else "test/acc") in capsys.readouterr().out


def test_predict_texts_come_from_the_predict_split(tiny_yelp: Path, tiny_bert: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """After setup, predict_texts() reads no raw data: the texts are kept beside the tokens (not fed to the model),
    in input order."""
    dm = run_stage(make_dm(tiny_yelp, tiny_bert, eval_size=25), TrainerFn.PREDICTING)

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("predict_texts() loaded the raw data again")

    monkeypatch.setattr(datamodule, "load_raw", no_loading)
    monkeypatch.setattr(datamodule, "draw_splits", no_loading)
    expected = datasets.load_dataset(str(tiny_yelp))["test"].shuffle(seed=42).select(range(25))["text"]
    assert dm.predict_texts() == list(expected)
    assert all("text" not in batch for batch in dm.predict_dataloader())


def test_predict_texts_before_setup_is_an_error(tiny_yelp: Path, tiny_bert: Path) -> None:
    with pytest.raises(UserInputError, match="call prepare_data"):
        make_dm(tiny_yelp, tiny_bert).predict_texts()


# ----- resume position --------------------------------------------------------------------------------------
def test_resume_position_travels_through_the_data_module(tiny_yelp: Path, tiny_bert: Path) -> None:
    """load_state_dict (restored before the train loader exists) makes the next train loader skip the consumed
    batches of that epoch; state_dict reports the sampler's position."""
    dm = make_dm(tiny_yelp, tiny_bert, batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(1)
    full = [batch["idx"].tolist() for batch in loader]
    resumed = make_dm(tiny_yelp, tiny_bert, batch_size=8)
    resumed.prepare_data()
    resumed.setup("fit")
    resumed.load_state_dict({"train_position": {"epoch": 1, "batches_received": 5}})
    loader = resumed.train_dataloader()
    loader.batch_sampler.set_epoch(1)  # as Lightning does at the epoch start
    assert [batch["idx"].tolist() for batch in loader] == full[5:]
    assert resumed.state_dict() == {"train_position": {"epoch": 1, "batches_received": 5}}


class PositionRecorder(pl.LightningModule):
    """Trains nothing useful; records the data module's saved position after each training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.positions: list[tuple[int, int]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.weight * batch["input_ids"].float().mean()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        position = self.trainer.datamodule.state_dict()["train_position"]
        self.positions.append((position["epoch"], position["batches_received"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_saved_position_counts_consumed_batches_with_loader_workers(tiny_yelp: Path, tiny_bert: Path) -> None:
    """With 2 loader workers prefetching ahead, the position a checkpoint would save after batch k is k+1."""
    dm = make_dm(tiny_yelp, tiny_bert, batch_size=16, num_workers=2, val_size=40)
    module = PositionRecorder()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    per_epoch = 160 // 16
    assert module.positions == [(epoch, k) for epoch in range(2) for k in range(1, per_epoch + 1)]


def test_no_private_lightning_api_in_the_data_package() -> None:
    """The distributed-sampler check read `trainer._accelerator_connector`; nothing in src/data reaches into
    private Lightning attributes (`trainer._...`)."""
    for path in sorted((REPO / "src" / "data").glob("*.py")):
        assert not re.search(r"trainer\._\w", path.read_text()), path.name
