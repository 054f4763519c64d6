"""Task-adaptive pretraining: `python -m src.pretrain fit --config configs/recipes/tapt.yaml [--section.key value]`.

Masked-LM training (`src.masked_lm.MaskedLanguageModel`) of the experiment's model on the experiment's training
reviews (`src.data.masked_lm.MaskedLMDataModule`: the same loading, splits and cache as fine-tuning; labels unused,
validation reviews only for the held-out MLM loss, test reviews never read). Stack it on an experiment to pretrain
on that experiment's data:

    python -m src.pretrain fit --config configs/quickstart.yaml --config configs/recipes/tapt.yaml
    python -m src.cli fit --config configs/quickstart.yaml --model.model_name_or_path logs/tapt/version_0/hf_model

The conventions are `src.cli`'s (the same CLI class): run directories, best (lowest val/loss) and last
checkpoints, `--ckpt_path last|best|FILE` to resume, TensorBoard. Fit ends by writing the best checkpoint's
encoder as a Hugging Face model directory to RUN_DIR/hf_model. `validate` reports a checkpoint's held-out loss.
"""

from pathlib import Path

import transformers
from lightning.pytorch.cli import LightningArgumentParser

from src.cli import DEFAULTS, ReviewClassifierCLI, run
from src.data.masked_lm import MaskedLMDataModule
from src.masked_lm import MaskedLanguageModel
from src.utils.checkpoint_io import load_checkpoint
from src.utils.errors import UserInputError
from src.utils.summary import print_run_summary

PRETRAIN_DEFAULTS = Path(__file__).resolve().parents[1] / "configs" / "pretrain_defaults.yaml"


class PretrainCLI(ReviewClassifierCLI):
    best_metric = ("val/loss", "min")
    default_configs = (DEFAULTS, PRETRAIN_DEFAULTS)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {key: value for key, value in ReviewClassifierCLI.subcommands().items() if key in ("fit", "validate")}

    def link_model_and_data(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.tokenizer_name_or_path")
        parser.link_arguments("seed_everything", "data.seed")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        for key, why in (("test_after_fit", "pretraining never reads the test split"),
                         ("export_best", "fit always writes RUN_DIR/hf_model")):
            if config.get(key):
                raise UserInputError(f"{key}: true does not apply to src.pretrain ({why}): set --{key} false "
                                     "(configs/recipes/tapt.yaml does)")
        super().before_instantiate_classes()

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if self.subcommand:
            self.datamodule.tokenizer  # noqa: B018  (a tokenizer without a mask token fails now, before any work)

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.fast_dev_run:
            return  # nothing was saved or logged
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        exported = None
        if trainer.is_global_zero and log_dir:
            note = ""
            if best:
                self.model.load_state_dict(load_checkpoint(best)["state_dict"])
                note = f" Weights of the checkpoint with the lowest held-out MLM loss: `{Path(best).name}`."
            exported = self.model.write_hf_model(Path(log_dir) / "hf_model", self.datamodule.tokenizer, note)
        print_run_summary(trainer, export_path=exported, log_dir=log_dir)
        if exported is not None:
            print(f"\nFine-tune from it: python -m src.cli fit --config CONFIG --model.model_name_or_path {exported}")


def main(args: list[str] | None = None) -> None:
    transformers.utils.logging.disable_progress_bar()  # the export's "Writing model shards" bar for a second's work
    run(PretrainCLI, MaskedLanguageModel, MaskedLMDataModule, args)


if __name__ == "__main__":
    main()
