"""`MaskedLanguageModel`: further masked-LM pretraining of an encoder on the task's own text (task-adaptive
pretraining, TAPT: Gururangan et al. 2020 "Don't Stop Pretraining"; within-task pretraining: Sun et al. 2019).

Run by `python -m src.pretrain fit` on `MaskedLMDataModule` batches; it logs the MLM loss (`train/loss`, `val/loss`:
mean cross-entropy per masked token) and `val/perplexity`, and `write_hf_model` writes the encoder as a Hugging Face
model directory that `python -m src.cli fit --model.model_name_or_path DIR` fine-tunes from.
"""

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import SumMetric
from transformers import AutoModel, AutoModelForMaskedLM, PreTrainedTokenizerBase

from src.model import LABEL_KEYS, NonFiniteLossError, compile_in_place, default_optimizer
from src.optim import check_schedule, configure_optimization, parameter_groups
from src.utils.atomic import atomic_write
from src.utils.checkpoint_io import check_checkpoint_fits
from src.utils.errors import UserInputError
from src.utils.pretrained import load_pretrained


class MaskedLanguageModel(pl.LightningModule):
    """An `AutoModelForMaskedLM` trained on masked batches (`labels` = original ids at masked positions, else -100).

    A model without a masked-LM head (a base `BertModel`, a sentence-transformers checkpoint, an ELECTRA
    discriminator) gets a freshly initialized head, with a warning: its first steps then mostly train the head.
    Weights of the checkpoint the MLM model does not use but a classifier does (BERT's and RoBERTa's pooler) are
    kept, frozen, and written into the exported directory, so fine-tuning starts from them rather than from random.

    Args:
        model_name_or_path: hub id, local dir, or `package:MODULE` (see `src.utils.pretrained`).
        optimizer, scheduler, scheduler_kwargs, warmup_steps, warmup_ratio, attn_implementation, compile: as in
            `SequenceClassifier` (so an experiment config stacks unchanged).
    """

    def __init__(
        self,
        model_name_or_path: str = "google-bert/bert-base-cased",
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: str = "linear",
        scheduler_kwargs: dict[str, Any] | None = None,
        warmup_steps: int = 0,
        warmup_ratio: float = 0.0,
        attn_implementation: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_schedule(scheduler, warmup_steps, warmup_ratio)
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        try:
            model, loading = load_pretrained(AutoModelForMaskedLM.from_pretrained, model_name_or_path,
                                             attn_implementation=attn_implementation, output_loading_info=True)
        except ValueError as err:  # "Unrecognized configuration class ... for this kind of AutoModel"
            raise UserInputError(f"model '{model_name_or_path}' has no masked-LM architecture in transformers "
                                 f"({str(err).splitlines()[0][:120]}): TAPT needs an encoder such as BERT or RoBERTa") \
                from None
        if loading["missing_keys"]:
            example = sorted(loading["missing_keys"])[0]
            rank_zero_warn(f"'{model_name_or_path}' has no masked-LM head ({len(loading['missing_keys'])} weights such "
                           f"as {example} are new): a fresh head is trained from random weights, so give TAPT "
                           "enough steps and warmup")
        self.model = model.train()
        # logits only where a token is masked (~15%): the vocabulary projection dominates an MLM step otherwise
        # (at 512 tokens, 8 x 512 x 30k logits and their gradients)
        self._masked: torch.Tensor | None = None
        decoder = self.model.get_output_embeddings()
        if isinstance(decoder, torch.nn.Linear):
            decoder.register_forward_pre_hook(self._only_masked_positions)
        self.pooler: torch.nn.Module | None = None  # carried unchanged into hf_model
        if any(".pooler." in f".{key}" for key in loading["unexpected_keys"]):
            base = load_pretrained(AutoModel.from_pretrained, model_name_or_path)
            self.pooler = base.pooler.requires_grad_(False).train()  # train mode as the rest (it has no dropout)
        self.loss_sum, self.token_count = SumMetric(), SumMetric()

    def check_checkpoint_fits(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_fits(self, checkpoint, ("model_name_or_path",))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint_fits(checkpoint)

    def configure_model(self) -> None:
        if self.hparams.compile:
            compile_in_place(self.model)

    def _only_masked_positions(self, decoder: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
        """Forward pre-hook of the vocabulary projection: keep the hidden states of masked positions only."""
        (hidden,) = args
        if self._masked is not None and hidden.shape[:-1] == self._masked.shape:
            return (hidden[self._masked],)
        return None

    def _masked_lm(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss over the batch's masked tokens and their count (a batch without any has loss 0)."""
        inputs = {key: value for key, value in batch.items() if key not in LABEL_KEYS}
        labels = batch["labels"]
        self._masked = labels != -100
        try:
            logits = self.model(**inputs).logits
        finally:
            masked, self._masked = self._masked, None
        targets = labels[masked] if logits.dim() == 2 else labels.flatten()  # sparse (the hook) or dense logits
        loss_sum = torch.nn.functional.cross_entropy(logits.reshape(len(targets), logits.shape[-1]).float(), targets,
                                                     ignore_index=-100, reduction="sum")
        count = masked.sum()
        return loss_sum / count.clamp(min=1), count

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, count = self._masked_lm(batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"masked-LM loss became {loss.item()} at global step {self.global_step}: "
                                     "lower model.optimizer.lr or add warmup")
        self.log("train/loss", loss, prog_bar=True, batch_size=int(count))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, count = self._masked_lm(batch)
        self.loss_sum.update(loss * count)
        self.token_count.update(count)

    def on_validation_epoch_end(self) -> None:
        """The exact mean over all masked held-out tokens (synced across ranks), and its perplexity."""
        loss = self.loss_sum.compute() / self.token_count.compute().clamp(min=1)
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/perplexity", torch.exp(loss))
        self.loss_sum.reset()
        self.token_count.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return configure_optimization(self, self.optimizer, parameter_groups(self.model), hp.scheduler,
                                      hp.scheduler_kwargs, hp.warmup_steps, hp.warmup_ratio)

    def write_hf_model(self, out_dir: str | Path, tokenizer: PreTrainedTokenizerBase, note: str = "") -> Path:
        """Write the model (with the carried pooler), its tokenizer and a model card to `out_dir`, atomically."""
        state = self.model.state_dict()
        if self.pooler is not None:
            prefix = self.model.base_model_prefix
            state.update({f"{prefix}.pooler.{key}": value for key, value in self.pooler.state_dict().items()})
        out = Path(out_dir)
        with atomic_write(out, directory=True) as staging:
            self.model.save_pretrained(staging, state_dict=state)
            tokenizer.save_pretrained(staging)
            (staging / "README.md").write_text(
                f"# {out.name}\n\n`{self.hparams.model_name_or_path}` after task-adaptive masked-LM pretraining "
                f"(`python -m src.pretrain`), global step {self.global_step}.{note}\n\nFine-tune it with "
                f"`python -m src.cli fit --config CONFIG --model.model_name_or_path {out}`.\n")
        return out
