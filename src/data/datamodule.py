"""`TextClassificationDataModule`: the Lightning hooks and loaders around checks, splits, tokenize and samplers.

`prepare_data` (one process per node) loads the raw dataset, checks and draws the splits the running command uses
(fit: train, validation and test; validate: validation; test: test; predict: the test split or `predict_file`),
tokenizes them and saves them as one cache entry; `setup` (every rank) loads that entry. Padding happens per batch
in the collator, so one entry serves every padding mode.

One cache entry per command's splits, keyed on their draws: `validate`/`test` never need the train rows or
`train_size`, and tokenizing one eval-sized split once more (then cached) is cheaper than keying them on fit's
settings; an instance reuses an entry it already holds, so `fit --test_after_fit` tokenizes nothing more.
"""

from pathlib import Path
from typing import Any, Literal

import datasets
import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase

from src.data.checks import CheckedSplits, check_positive, check_split, load_raw
from src.data.predict_file import load_predict_file
from src.data.samplers import EvalBatchSampler, TrainBatchSampler
from src.data.splits import SplitPlan, draw_splits
from src.data.tokenize import DamagedCache, Tokenization, cache_path, load_cache, save_cache, tokenize_splits
from src.utils.errors import UserInputError
from src.utils.pretrained import load_pretrained

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ALL_SPLITS = ("train", "validation", "test")
STAGE_SPLITS = {
    TrainerFn.FITTING: ALL_SPLITS,  # test too: bad test data stops fit before training; test_after_fit uses it
    TrainerFn.VALIDATING: ("validation",),
    TrainerFn.TESTING: ("test",),
    TrainerFn.PREDICTING: ("test",),  # without predict_file
}
KEEP_TEXT = ("test", "predict")  # the splits predict runs on keep their reviews, for `predict_texts()`


class TextClassificationDataModule(pl.LightningDataModule):
    """Review text + star label, tokenized for a sequence classifier.

    Args:
        dataset: hub id (e.g. `Yelp/yelp_review_full`) or a local dataset dir / data files for `load_dataset`.
        tokenizer_name_or_path: set from `model.model_name_or_path` by the CLI, so the model is named once.
        text_column, label_column: column names in the dataset.
        num_labels: number of classes; labels must be integers in 0..num_labels-1.
        max_length: tokens kept per review, special tokens included; at most the model's position embeddings.
        truncation: which tokens a longer review keeps: "head" the first (the tutorial's), "tail" the last,
            "head_tail" the first `head_tokens` and the last `max_length - head_tokens - <special tokens>`
            (Sun et al. 2019: the best of the three on long documents).
        head_tokens: with truncation=head_tail, the tokens kept from the start of a review.
        padding: "longest" pads each batch to its longest review (fast); "max_length" pads every review to
            `max_length` like the HF tutorial (same results, several times more compute).
        batching: "length_grouped" forms training batches of similar length (less padding); "random" is the
            tutorial's plain shuffle.
        max_tokens: optional token budget per training batch (padded tokens); overrides `batch_size` for training.
        train_size, eval_size: optional subset sizes, drawn after a shuffle with `seed` (the tutorial: 1000/1000).
            `eval_size` applies to the validation and the test split. None = the full split.
        val_size, val_fraction: validation rows carved from train when the dataset has no validation split
            (`val_size` wins; default: `eval_size` if set, else `val_fraction` of train).
        test_size: test rows carved from train when the dataset has no test split (default: `eval_size` if set,
            else `val_fraction` of train), so test numbers are never validation numbers. Train is shuffled with
            `seed`; test is its tail, validation the tail of the rest, `train_size` the head of what is left, so
            validation and test are the same rows whatever `train_size` is.
        num_folds, fold: K-fold cross-validation: validation is fold `fold` (0..K-1) of a seeded, label-stratified
            partition of the train rows (after the test carve; the test split is untouched; a validation split
            of the dataset is not used), train the other folds (then `train_size` applies). None = no folds.
        seed: the shuffle seed for subsets, carves, folds and batch order (linked to `seed_everything`).
        predict_file: reviews to predict (.txt one per line, .csv / .jsonl with `text_column`, UTF-8; an empty
            review is allowed); default: the test split.
        cache_dir: where tokenized datasets are kept; default `<HF datasets cache>/review_classifier_tokenized`.
        tokenize_num_proc: processes for tokenization; None = 1 for small datasets, up to 8 for large ones.
    """

    def __init__(
        self,
        dataset: str = "Yelp/yelp_review_full",
        tokenizer_name_or_path: str = "google-bert/bert-base-cased",
        text_column: str = "text",
        label_column: str = "label",
        num_labels: int = 5,
        max_length: int = 512,
        truncation: Literal["head", "tail", "head_tail"] = "head",
        head_tokens: int = 128,
        padding: Literal["longest", "max_length"] = "longest",
        batching: Literal["length_grouped", "random"] = "length_grouped",
        max_tokens: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        train_size: int | None = None,
        eval_size: int | None = None,
        val_size: int | None = None,
        val_fraction: float = 0.1,
        test_size: int | None = None,
        num_folds: int | None = None,
        fold: int = 0,
        seed: int = 42,
        predict_file: str | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        tokenize_num_proc: int | None = None,
    ) -> None:
        super().__init__()
        check_positive(batch_size=batch_size, eval_batch_size=eval_batch_size, max_length=max_length,
                       num_labels=num_labels, head_tokens=head_tokens)
        if max_tokens is not None and max_tokens < max_length:
            raise UserInputError(f"data.max_tokens={max_tokens} must be >= data.max_length={max_length} "
                                 "so the longest review fits in a batch")
        self.save_hyperparameters()
        self.split_plan = SplitPlan(seed=seed, train_size=train_size, eval_size=eval_size, val_size=val_size,
                                    val_fraction=val_fraction, test_size=test_size, num_folds=num_folds, fold=fold)
        self.tokenization = Tokenization(text_column=text_column, label_column=label_column, max_length=max_length,
                                         truncation=truncation, head_tokens=head_tokens)
        self.cache_root = Path(cache_dir or Path(datasets.config.HF_DATASETS_CACHE) / "review_classifier_tokenized")
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.splits: datasets.DatasetDict | None = None
        self._drawn_by_names: dict[tuple[str, ...], tuple[dict[str, datasets.Dataset], Path]] = {}
        self._train_sampler: TrainBatchSampler | None = None
        self._resume_position: dict[str, int] | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            tokenizer = load_pretrained(AutoTokenizer.from_pretrained, self.hparams.tokenizer_name_or_path)
            self.tokenization.check(tokenizer)
            self._tokenizer = tokenizer
        return self._tokenizer

    # ----- the running command's splits, tokenized once -----------------------------------------------------
    def _split_names(self) -> tuple[str, ...]:
        """The splits the running command uses (`trainer.state.fn`); fit's without a Trainer."""
        fn = self.trainer.state.fn if self.trainer is not None else None
        if self.hparams.predict_file is not None and fn in (None, TrainerFn.PREDICTING):
            return ("predict",)
        return STAGE_SPLITS.get(fn, ALL_SPLITS)

    def _drawn(self) -> tuple[dict[str, datasets.Dataset], Path]:
        """The drawn (untokenized) splits and their cache entry; once per process and command, as drawing loads
        and hashes the raw data."""
        names = self._split_names()
        for held, drawn in self._drawn_by_names.items():
            if set(names) <= set(held):  # also test after fit on this instance: fit's entry holds that test split
                return drawn
        hp = self.hparams
        if names == ("predict",):
            sources = {"predict": load_predict_file(hp.predict_file, hp.text_column)}
        else:
            raw = CheckedSplits(load_raw(hp.dataset), lambda split, name: check_split(
                split, name, hp.text_column, hp.label_column, hp.num_labels))
            sources = draw_splits(raw, names, self.split_plan, hp.label_column)
        path = cache_path(self.cache_root, hp.dataset, sources, self.tokenizer, self.tokenization, KEEP_TEXT)
        self._drawn_by_names[names] = sources, path
        return sources, path

    def prepare_data(self) -> None:
        sources, path = self._drawn()
        if path.exists():
            try:
                load_cache(path)
                rank_zero_info(f"Reusing tokenized data from {path}")
                return
            except DamagedCache as err:
                rank_zero_warn(f"Tokenized data at {path} is damaged ({err}): rebuilding it")
        tokenized = tokenize_splits(sources, self.tokenizer, self.tokenization, KEEP_TEXT,
                                    self.hparams.tokenize_num_proc)
        save_cache(tokenized, path)
        rank_zero_info(f"Tokenized data cached at {path}")

    def setup(self, stage: str) -> None:
        """Loads what `prepare_data` prepared: the splits of the command `stage` names under a Trainer, or all of
        them without one. Splits of an earlier command on this instance (fit before test_after_fit) stay."""
        _, path = self._drawn()
        if not path.exists():
            raise UserInputError(f"no tokenized data at {path}: call prepare_data() before setup()")
        try:
            loaded = load_cache(path)
        except DamagedCache as err:
            raise UserInputError(f"tokenized data at {path} is damaged ({err}): run prepare_data() again") from None
        self.splits = datasets.DatasetDict({**(self.splits or {}), **loaded})

    # ----- loaders -----------------------------------------------------------------------------------------
    def _collator(self) -> DataCollatorWithPadding:
        if self.hparams.padding == "max_length":
            return DataCollatorWithPadding(self.tokenizer, padding="max_length", max_length=self.hparams.max_length)
        multiple = 8 if self._on_gpu() else None  # tensor-core friendly shapes on GPU
        return DataCollatorWithPadding(self.tokenizer, padding="longest", pad_to_multiple_of=multiple)

    def _on_gpu(self) -> bool:
        return self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _split(self, name: str) -> datasets.Dataset:
        if self.splits is None or name not in self.splits:
            raise UserInputError(f"the data module has no '{name}' split set up: call prepare_data() and setup() "
                                 "first")
        return self.splits[name]

    def _loader(self, split: datasets.Dataset, batch_sampler: Any, **kwargs: Any) -> DataLoader:
        return DataLoader(
            split.select_columns([c for c in (*MODEL_INPUTS, "labels", "idx", "length") if c in split.column_names]),
            batch_sampler=batch_sampler,
            collate_fn=self._collator(),
            num_workers=self.hparams.num_workers,
            pin_memory=self._on_gpu(),
            persistent_workers=self.hparams.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        split = self._split("train")
        rank, world = self._rank_and_world()
        self._train_sampler = TrainBatchSampler(
            _lengths(split), self.hparams.batch_size, max_tokens=self.hparams.max_tokens,
            group_by_length=self.hparams.batching == "length_grouped", seed=self.hparams.seed,
            num_replicas=world, rank=rank,
        )
        if self._resume_position is not None:
            self._train_sampler.load_state_dict(self._resume_position)
            self._resume_position = None
        # a private generator: creating the loader's iterator must not draw from the global RNG (dropout, resume)
        return self._loader(split, self._train_sampler, generator=torch.Generator().manual_seed(0))

    def _eval_loader(self, name: str) -> DataLoader:
        split = self._split(name)
        rank, world = self._rank_and_world()
        batch_size = self.hparams.eval_batch_size if self.hparams.eval_batch_size is not None \
            else self.hparams.batch_size
        return self._loader(split, EvalBatchSampler(_lengths(split), batch_size, num_replicas=world, rank=rank))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self._predict_split())

    def predict_texts(self) -> list[str]:
        """The texts of the predict split, in input order (for prediction files); kept in the split, so free."""
        return self._split(self._predict_split()).data.column("text").to_pylist()

    def _predict_split(self) -> str:
        return "test" if self.hparams.predict_file is None else "predict"

    # ----- resume mid-epoch ----------------------------------------------------------------------------------
    # Lightning restores a stateful train loader itself, but not when `configure_optimizers` reads
    # `trainer.estimated_stepping_batches` first, as ours does (Lightning issue #20550): the loader is built
    # before the checkpoint's loop state is read. The data module's state is read before that, so the sampler's
    # position travels here.
    def state_dict(self) -> dict[str, Any]:
        return {"train_position": self._train_sampler.state_dict()} if self._train_sampler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_position = state_dict.get("train_position")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Lightning calls this once for each batch a loop consumes: the sampler counts the training ones."""
        if self._train_sampler is not None and self.trainer is not None and self.trainer.training:
            self._train_sampler.batch_consumed()
        return batch


def _lengths(split: datasets.Dataset) -> list[int]:
    """Token counts per row, read in one go (a plain `split["length"]` is a lazy Column in datasets >= 4)."""
    return split.data.column("length").to_pylist()
