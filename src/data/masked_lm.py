"""`MaskedLMDataModule`: the classification data module's reviews as masked-LM batches, for task-adaptive
pretraining (`python -m src.pretrain`).

Loading, checks, splits, tokenization, cache and samplers are `TextClassificationDataModule`'s, so TAPT reads
exactly the training reviews the fine-tuning run will read; only the collator differs. `fit` serves the train
split for training and the validation split for the held-out MLM loss; labels are dropped; the test split is never
read.
"""

import dataclasses
import json
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from src.data.datamodule import MODEL_INPUTS, TextClassificationDataModule
from src.utils.errors import UserInputError

WORD_START_MARKS = ("Ġ", "▁")  # byte-level BPE (RoBERTa, ModernBERT) and SentencePiece (DeBERTa-v3, XLM-R)


def continuation_pieces(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """A bool per vocabulary id: True for a piece that continues the word before it (WordPiece `##ing`; a BPE or
    SentencePiece piece without the word-start mark)."""
    if not tokenizer.is_fast:
        raise UserInputError("data.whole_word_mask needs a fast tokenizer (tokenizers library): set it to false")
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if model["type"] == "WordPiece":
        prefix = model.get("continuing_subword_prefix") or "##"
        flags = [piece.startswith(prefix) for piece in pieces]
    elif model["type"] in ("BPE", "Unigram"):
        flags = [not piece.startswith(WORD_START_MARKS) for piece in pieces]
    else:
        raise UserInputError(f"data.whole_word_mask: cannot tell words apart in a {model['type']} tokenizer: set it "
                             "to false")
    return torch.tensor(flags, dtype=torch.bool)


class MaskingCollator:
    """Pads a batch and masks it with `DataCollatorForLanguageModeling` (labels: the original ids at masked
    positions, -100 elsewhere). Special tokens and padding are never masked.

    With `seed`, each batch is masked with a generator seeded from the seed and its first row's index: the same
    rows get the same masks every epoch (for a held-out loss that compares across epochs). Without it, the global
    torch RNG is used (seeded by `seed_everything`, restored on resume): fresh masks every epoch.
    With `whole_word_mask`, the pieces of a word are masked together; word boundaries come from the vocabulary
    (`continuation_pieces`), as the cached token ids carry no character offsets.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mlm_probability: float, whole_word_mask: bool,
                 pad_to_multiple_of: int | None = None, seed: int | None = None,
                 max_length: int | None = None) -> None:
        replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if whole_word_mask else {}  # HF's rule
        self.masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability,
                                                      whole_word_mask=whole_word_mask, **replace)
        self.tokenizer, self.pad_to_multiple_of, self.seed = tokenizer, pad_to_multiple_of, seed
        self.max_length = max_length  # pad every batch to it (data.padding=max_length); None: to the longest row
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.continuation = continuation_pieces(tokenizer) if whole_word_mask else None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = [{key: f[key] for key in MODEL_INPUTS if key in f} for f in features]
        padded = self.tokenizer.pad(inputs, padding="max_length" if self.max_length else "longest",
                                    max_length=self.max_length, pad_to_multiple_of=self.pad_to_multiple_of,
                                    return_tensors="pt")
        ids = padded["input_ids"]
        special = torch.isin(ids, self.special_ids) | (padded["attention_mask"] == 0)
        rows = {key: value.tolist() for key, value in padded.items()}
        rows["special_tokens_mask"] = special.int().tolist()
        if self.continuation is not None:
            rows["offset_mapping"] = self._offsets(ids, special).tolist()
        batch_rows = [{key: rows[key][i] for key in rows} for i in range(len(ids))]
        masker = self.masker
        if self.seed is not None:  # a fresh collator: its generator starts from this batch's seed
            masker = dataclasses.replace(masker, seed=self.seed + int(features[0]["idx"]))
        return dict(masker(batch_rows))

    def _offsets(self, ids: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
        """Stand-in character offsets that tell HF's whole-word masking where words start: a continuation piece
        starts where the piece before it ends, any other piece one character later."""
        starts_word = ~self.continuation[ids.clamp(max=len(self.continuation) - 1)] | special
        position = torch.arange(ids.shape[1]) + starts_word.long().cumsum(dim=1)
        return torch.stack((position, position + 1), dim=-1)


class MaskedLMDataModule(TextClassificationDataModule):
    """Masked-LM batches of a text classification dataset's reviews (labels unused).

    Takes every argument of `TextClassificationDataModule` (dataset, max_length, truncation, batch sizes, subset
    sizes, the validation carve, ...) and:

    Args:
        mlm_probability: share of tokens to mask and predict (BERT: 0.15; of those 80% become the mask token, 10% a
            random token, 10% stay).
        whole_word_mask: mask every piece of a word together (then all masked pieces become the mask token).
    """

    def __init__(self, *args: Any, mlm_probability: float = 0.15, whole_word_mask: bool = False,
                 **kwargs: Any) -> None:
        if not 0 < mlm_probability < 1:
            raise UserInputError(f"data.mlm_probability={mlm_probability} must be between 0 and 1 (BERT: 0.15)")
        super().__init__(*args, **kwargs)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        tokenizer = super().tokenizer
        if tokenizer.mask_token is None:
            raise UserInputError(
                f"the tokenizer of '{self.hparams.tokenizer_name_or_path}' has no mask token, which masked-LM "
                "pretraining needs: use an encoder with one (BERT, RoBERTa, DeBERTa, ELECTRA, ModernBERT, DistilBERT)"
            )
        return tokenizer

    def _split_names(self) -> tuple[str, ...]:
        """Fit draws train and validation only: the test reviews are never read (nor checked or tokenized)."""
        return tuple(name for name in super()._split_names() if name != "test") or ("validation",)

    def _collator(self, seed: int | None = None) -> MaskingCollator:
        hp = self.hparams
        fixed = hp.padding == "max_length"
        return MaskingCollator(self.tokenizer, hp.mlm_probability, hp.whole_word_mask, seed=seed,
                               pad_to_multiple_of=8 if self._on_gpu() and not fixed else None,
                               max_length=hp.max_length if fixed else None)

    def val_dataloader(self) -> DataLoader:
        loader = super().val_dataloader()
        loader.collate_fn = self._collator(seed=self.hparams.seed)  # the same masks every validation epoch
        return loader

    def test_dataloader(self) -> DataLoader:
        raise UserInputError("masked-LM pretraining never reads the test split: evaluate the fine-tuned model on it")

    def predict_dataloader(self) -> DataLoader:
        raise UserInputError("masked-LM pretraining has no predictions: fine-tune from RUN_DIR/hf_model, then predict")
