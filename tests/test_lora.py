"""LoRA: adapters on the default targets of every architecture and the head trained in full; checkpoints hold only
the trained weights; resume, `--ckpt_path best` and the merged export work; bad settings are one-line errors."""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from src.cli import main
from src.export import _restore_module, export_checkpoint
from src.lora import add_lora
from src.model import SequenceClassifier
from src.utils.architectures import ARCHITECTURES as TABLE
from src.utils.errors import UserInputError
from tests.cli_helpers import REPO, tiny_run_args
from tests.fixtures import ARCHITECTURES, tiny_config
from tests.test_errors import fail
from tests.test_export import TEXTS


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_only_adapters_and_head_train(model_type: str) -> None:
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type))
    linear = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    arch = TABLE[model_type]
    head = (*arch.head, *(f"{arch.prefix}.{module}" for module in arch.above))  # the pooler trains with the head
    head_params = sum(p.numel() for name, p in model.named_parameters()
                      if name.startswith(tuple(f"{h}." for h in head)))
    total = sum(p.numel() for p in model.parameters())
    wrapped = add_lora(model, r=4, alpha=8, dropout=0.0, target_modules=None, newly_initialized=set())
    targets = [m for name, m in linear.items() if name.rsplit(".", 1)[-1] in TABLE[model_type].lora_targets]
    assert len(targets) == 3 * (len(TABLE[model_type].lora_targets))  # each of the 3 layers
    expected = sum(4 * (m.in_features + m.out_features) for m in targets) + head_params
    trainable = {name: p for name, p in wrapped.named_parameters() if p.requires_grad}
    assert all(".lora_" in name or ".modules_to_save." in name for name in trainable)
    assert sum(p.numel() for p in trainable.values()) == expected
    assert expected < 0.5 * total


def test_weights_from_pretrained_had_to_create_train_in_full() -> None:
    """A module `from_pretrained` had to initialize (missing from the checkpoint) trains rather than stays frozen at
    random; BERT's pooler, between the last layer and the classifier, trains with the head."""
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert"))
    wrapped = add_lora(model, 4, 8, 0.0, None, newly_initialized={"bert.encoder.layer.2.output.dense.weight",
                                                                  "bert.pooler.dense.bias", "classifier.weight"})
    bert = wrapped.get_base_model().bert
    for module in (bert.encoder.layer[2].output.dense, bert.pooler):
        assert all(p.requires_grad for p in module.modules_to_save.default.parameters())


def test_target_modules_override_and_typos(tiny_bert: Path) -> None:
    module = SequenceClassifier(str(tiny_bert), peft="lora", lora_target_modules=["query", "key", "value", "dense"])
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in module.named_parameters() if "lora_A" in name}
    assert adapted == {"query", "key", "value", "dense"}
    with pytest.raises(UserInputError, match=r"model.lora_target_modules: \['qkv'\] match no linear layer of this "
                                             r"bert model: use names from \[.*'query'"):
        SequenceClassifier(str(tiny_bert), peft="lora", lora_target_modules=["query", "qkv"])
    with pytest.raises(UserInputError, match=r"model\.peft='prefix' is not a PEFT method here: use one of lora"):
        SequenceClassifier(str(tiny_bert), peft="prefix")
    with pytest.raises(UserInputError, match=r"model\.lora_r=0 must be >= 1"):
        SequenceClassifier(str(tiny_bert), peft="lora", lora_r=0)


def test_target_modules_that_match_nothing_fail_in_one_line(tiny_bert: Path, tiny_yelp: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    message = fail(["fit", *tiny_run_args(tiny_bert, tiny_yelp), "--config", str(REPO / "configs/recipes/lora.yaml"),
                    "--model.lora_target_modules", "[q_proj]"], capsys)
    assert message.startswith("error: model.lora_target_modules: ['q_proj'] match no linear layer"), message
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.ckpt"))


# ----- LoRA runs through the CLI, in-process: 2 epochs straight; and stopped at step 14, then resumed ------------
class Runs(NamedTuple):
    root: Path
    base: Path  # a copy of the tiny BERT the runs are trained on
    args: list[str]
    straight: Path  # the uninterrupted run's directory
    resumed: Path


class StopAt(Callback):
    """Test-only: fail before the batch of global step `step`, like a crash (the periodic last.ckpt stays)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"stopped at step {self.step}")


def lora_args(base: Path, tiny_yelp: Path, *extra: str) -> list[str]:
    return [*tiny_run_args(base, tiny_yelp), "--config", str(REPO / "configs/recipes/llrd.yaml"),
            "--config", str(REPO / "configs/recipes/lora.yaml"), "--model.optimizer.lr", "5e-3",
            "--trainer.max_epochs", "2", "--periodic_checkpoint.every_n_train_steps", "3", *extra]


@pytest.fixture(scope="module")
def runs(tiny_bert: Path, tiny_yelp: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    root = tmp_path_factory.mktemp("lora_runs")
    base = Path(shutil.copytree(tiny_bert, root / "base"))
    with pytest.MonkeyPatch.context() as mp:  # the per-test cache fixture does not reach module-scoped fixtures
        mp.chdir(root)
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", root / "hf_datasets_cache")
        args = lora_args(base, tiny_yelp)
        main(["fit", *args, "--trainer.logger.init_args.name", "straight"])
        stop = json.dumps({"class_path": "tests.test_lora.StopAt", "init_args": {"step": 14}})
        with pytest.raises(RuntimeError, match="stopped at step 14"):
            main(["fit", *args, "--trainer.logger.init_args.name", "resumed", f"--trainer.callbacks+={stop}"])
        assert trained_step(root / "logs/resumed/version_0") == 12
        main(["fit", *args, "--trainer.logger.init_args.name", "resumed", "--ckpt_path", "last"])
        yield Runs(root, base, args, root / "logs/straight/version_0", root / "logs/resumed/version_0")


def trained_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints/last.ckpt", weights_only=True)["state_dict"]


def trained_step(run: Path) -> int:
    return torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"]


def test_checkpoint_holds_only_trained_weights(runs: Runs) -> None:
    checkpoint = torch.load(runs.straight / "checkpoints/last.ckpt", weights_only=True)
    module = _restore_module(checkpoint)
    everything = {name: p for name, p in module.named_parameters()}
    trainable = {name for name, p in everything.items() if p.requires_grad}
    saved = set(checkpoint["state_dict"])
    assert {key for key in saved if key.startswith("model.")} == trainable
    saved_bytes = sum(t.numel() * t.element_size() for t in checkpoint["state_dict"].values())
    full_bytes = sum(p.numel() * p.element_size() for p in everything.values())
    share = sum(everything[name].numel() for name in trainable) / sum(p.numel() for p in everything.values())
    assert share < 0.2 and saved_bytes < 0.2 * full_bytes  # tiny BERT: 8 adapters, pooler, classifier: 13% of it
    # Adam's state exists for trained parameters only
    states = checkpoint["optimizer_states"][0]["state"]
    assert sum(s["exp_avg"].numel() for s in states.values()) == sum(everything[n].numel() for n in trainable)
    assert isinstance(checkpoint.get("lora_base_fingerprint"), float)


def test_resumed_run_ends_like_the_uninterrupted_one(runs: Runs) -> None:
    assert trained_step(runs.straight) == trained_step(runs.resumed) == 20
    straight, resumed = trained_weights(runs.straight), trained_weights(runs.resumed)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    lora_b = [t for key, t in straight.items() if "lora_B" in key]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b)  # trained (B starts at zero)


def test_best_checkpoint_tests_and_exports_a_merged_plain_model(runs: Runs, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(runs.root)
    main(["test", *runs.args, "--trainer.logger.init_args.name", "straight", "--ckpt_path", "best"])
    assert list((runs.straight / "eval").glob("test_*/events.out.tfevents.*"))
    best = next(p for p in (runs.straight / "checkpoints").glob("epoch*.ckpt"))
    out = export_checkpoint(best, tmp_path / "merged")
    assert "LoRA" in (out / "README.md").read_text()

    unmerged = _restore_module(torch.load(best, weights_only=True))
    assert isinstance(unmerged.model, PeftModel)
    batch = AutoTokenizer.from_pretrained(runs.base)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = unmerged(dict(batch))
        plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
        assert not any("lora" in name for name, _ in plain.named_parameters())
        assert torch.allclose(plain(**batch).logits, expected, atol=1e-5)
    base_query = load_file(runs.base / "model.safetensors")["encoder.layer.0.attention.self.query.weight"]
    assert not torch.allclose(plain.bert.encoder.layer[0].attention.self.query.weight, base_query)  # merged in

    # what `pipeline` serves: a plain model (no adapter_config.json, so transformers never reaches for peft)
    assert not (out / "adapter_config.json").exists()
    predictions = pipeline("text-classification", model=str(out), top_k=None)(TEXTS)
    for scores, row in zip(predictions, expected.softmax(-1), strict=True):
        by_label = {item["label"]: item["score"] for item in scores}
        assert [by_label[plain.config.id2label[i]] for i in range(5)] == pytest.approx(row.tolist(), abs=1e-5)


def test_checkpoint_refused_with_other_adapters_or_other_base_weights(runs: Runs, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(runs.root)
    last = str(runs.straight / "checkpoints/last.ckpt")
    message = fail(["validate", *runs.args, "--ckpt_path", last, "--model.lora_r", "4"], capsys)
    assert "the checkpoint was trained with lora_r=8 (this run: 4)" in message
    message = fail(["validate", *runs.args, "--ckpt_path", last, "--model.peft", "null"], capsys)
    assert "the checkpoint was trained with peft='lora' (this run: None)" in message

    changed = Path(shutil.copytree(runs.base, tmp_path / "changed_base"))
    weights = load_file(changed / "model.safetensors")
    weights["encoder.layer.1.output.dense.weight"] += 0.01
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    args = [*runs.args, "--model.model_name_or_path", str(changed)]
    message = fail(["validate", *args, "--ckpt_path", last], capsys)
    assert "LoRA adapters were trained on other base weights than" in message
