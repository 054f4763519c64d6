"""`src.export`: a checkpoint becomes a Hugging Face model directory that plain `transformers` serves unchanged."""

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import NamedTuple

import datasets
import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoTokenizer

from src.data import TextClassificationDataModule
from src.export import OnnxMismatchError, export_checkpoint, main
from src.model import SequenceClassifier, star_label_names
from src.utils.errors import UserInputError

TEXTS = [
    "the food was superb and the staff very good",
    "awful service , poor table , not okay",
    "okay",
    "an unseen word list : zebra quantum",
]

# runs with cwd=tmp_path and no project path, so only the installed transformers can serve the export
PIPELINE_SCRIPT = """
import json, sys
from transformers import pipeline
classifier = pipeline("text-classification", model=sys.argv[1], top_k=None)
predictions = classifier(json.loads(sys.argv[2]))
print(json.dumps({"predictions": predictions, "project_imported": "src" in sys.modules}))
"""


class Trained(NamedTuple):
    ckpt: Path
    module: SequenceClassifier


@pytest.fixture(scope="module")
def trained(tiny_bert: Path, tiny_yelp: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A checkpoint after two steps at a high learning rate, so its weights are far from the base model's."""
    root = tmp_path_factory.mktemp("export_ckpt")
    with pytest.MonkeyPatch.context() as mp:  # the per-test cache fixture does not reach module-scoped fixtures
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", root / "hf_datasets_cache")
        pl.seed_everything(0)
        data = TextClassificationDataModule(
            dataset=str(tiny_yelp), tokenizer_name_or_path=str(tiny_bert), max_length=64,
            batch_size=8, cache_dir=str(root / "tokenized"))
        module = SequenceClassifier(model_name_or_path=str(tiny_bert), optimizer=partial(torch.optim.AdamW, lr=1e-2))
        trainer = pl.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        trainer.fit(module, datamodule=data)
        ckpt = root / "model.ckpt"
        trainer.save_checkpoint(ckpt)
    return Trained(ckpt, module.eval())


@pytest.fixture(scope="module")
def exported(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_checkpoint(trained.ckpt, tmp_path_factory.mktemp("export") / "nested" / "model")


def module_probs(module: SequenceClassifier, tokenizer_dir: Path) -> list[list[float]]:
    """The LightningModule's own class probabilities, one text at a time like the pipeline."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with torch.no_grad():
        return [module(dict(tokenizer(text, return_tensors="pt")))[0].float().softmax(-1).tolist() for text in TEXTS]


def test_export_serves_with_plain_transformers_pipeline(trained: Trained, exported: Path, tiny_bert: Path,
                                                        tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(exported), json.dumps(TEXTS)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["project_imported"] is False

    names = star_label_names(5)
    expected = module_probs(trained.module, tiny_bert)
    for text_scores, probs in zip(output["predictions"], expected, strict=True):
        scores = {item["label"]: item["score"] for item in text_scores}
        assert sorted(scores) == sorted(names)
        assert [scores[name] for name in names] == pytest.approx(probs, abs=1e-5)
    assert max(expected[0]) - min(expected[0]) > 1e-3  # the comparison would mean little on flat outputs


def test_export_directory_contents(trained: Trained, exported: Path) -> None:
    assert (exported / "model.safetensors").is_file()
    assert not list(exported.glob("*.bin")) and not (exported / "model.onnx").exists()
    config = json.loads((exported / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(["1 star", "2 stars", "3 stars",
                                                                         "4 stars", "5 stars"])}
    assert config["label2id"] == {name: int(i) for i, name in config["id2label"].items()}
    assert (exported / "tokenizer_config.json").is_file()
    card = (exported / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "5 stars" in card and str(trained.ckpt) in card
    assert [p.name for p in exported.parent.iterdir()] == ["model"]  # the staging dir was renamed, not left
    umask = os.umask(0)
    os.umask(umask)
    assert exported.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert (exported / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_refuses_to_overwrite_non_empty_dir(trained: Trained, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserInputError, match=rf"'{out}' already exists and is not empty: pass a new OUT_DIR"):
        export_checkpoint(trained.ckpt, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging dir was made


def test_cli_exports_into_empty_dir_and_prints_path(trained: Trained, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    main([str(trained.ckpt), str(out)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert (out / "model.safetensors").is_file()


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        export_checkpoint(tmp_path / "nope.ckpt", tmp_path / "out")
    with pytest.raises(SystemExit, match=r"^error: checkpoint '.*nope.ckpt' does not exist"):
        main([str(tmp_path / "nope.ckpt"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_text("not a checkpoint")
    with pytest.raises(UserInputError, match="could not read checkpoint"):
        export_checkpoint(bogus, tmp_path / "out")


def test_failure_leaves_no_partial_export(trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_card(*args: object, **kwargs: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr("src.export._model_card", broken_card)
    parent = tmp_path / "exports"
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(trained.ckpt, parent / "out")
    assert list(parent.iterdir()) == []


def test_onnx_export_matches_pytorch(trained: Trained, tiny_bert: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = export_checkpoint(trained.ckpt, tmp_path / "out", onnx=True)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = AutoTokenizer.from_pretrained(out)(TEXTS, padding=True, return_tensors="np")  # other shapes than export
    (logits,) = session.run(["logits"], dict(batch))
    with torch.no_grad():
        expected = trained.module({k: torch.from_numpy(v) for k, v in batch.items()}).float().numpy()
    assert abs(logits - expected).max() < 1e-4
    assert "model.onnx" in (out / "README.md").read_text()


def test_onnx_mismatch_discards_export(trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr("src.export.ONNX_TOLERANCE", 0.0)  # no difference is below 0: the check must fail
    parent = tmp_path / "exports"
    with pytest.raises(OnnxMismatchError, match="ONNX logits differ"):
        export_checkpoint(trained.ckpt, parent / "out", onnx=True)
    assert list(parent.iterdir()) == []


def test_onnx_without_packages_is_a_user_error(trained: Trained, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail as if not installed
    with pytest.raises(UserInputError, match=r"needs the 'onnx(runtime)?' package: run `pip install onnx onnxruntime`"):
        export_checkpoint(trained.ckpt, tmp_path / "out", onnx=True)
    assert not (tmp_path / "out").exists()
