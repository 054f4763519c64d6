"""The GPU path end to end on the tiny fixtures: bf16-mixed and 16-mixed fit, `--model.compile`, padding to
multiples of 8, MFU, and predict + export from a bf16 run. Marked `gpu`; skipped without CUDA.

    python -m pytest -m gpu tests/test_gpu.py -v      # on a GPU machine; benchmarks/gpu_suite.sh runs it
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import pytest
import torch

from tests.cli_helpers import REPO, run_cli, scalars, tiny_run_args

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (no CUDA device here); benchmarks/gpu_suite.sh runs these on one"),
]
GPU = ["--config", str(REPO / "configs/hardware/gpu.yaml")]
BF16 = [*GPU, "--config", str(REPO / "configs/hardware/bf16.yaml")]
FP16 = [*GPU, "--config", str(REPO / "configs/hardware/fp16.yaml")]
TEST_ROWS = 41  # tiny_run_args' eval_size


class GpuRunRecorder(pl.Callback):
    """Added with `--trainer.callbacks+=`: writes what a GPU run really did to `out` as JSON: the
    precision, the dtype the classifier head computed in, whether the model was compiled, batch widths."""

    def __init__(self, out: str, hook_head: bool = True) -> None:
        super().__init__()
        self.out, self.hook_head = Path(out), hook_head
        self.record: dict[str, Any] = {"head_dtypes": [], "train_widths": [], "val_widths": []}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.update(precision=str(trainer.precision), device=str(pl_module.device))
        if self.hook_head:  # the last Linear is the classification head
            head = [m for m in pl_module.modules() if isinstance(m, torch.nn.Linear)][-1]
            head.register_forward_hook(lambda _m, _i, output: self._dtype(output))

    def _dtype(self, output: torch.Tensor) -> None:
        if str(output.dtype) not in self.record["head_dtypes"]:
            self.record["head_dtypes"].append(str(output.dtype))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # torch has no public "is this module compiled"; nn.Module.compile() sets this attribute
        self.record["compiled"] = getattr(pl_module.model, "_compiled_call_impl", None) is not None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.record["train_widths"].append(int(batch["input_ids"].shape[-1]))

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self.record["val_widths"].append(int(batch["input_ids"].shape[-1]))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out.write_text(json.dumps(self.record))


class GpuRun(NamedTuple):
    run_dir: Path
    record: dict[str, Any]
    stdout: str
    stderr: str


def fit_on_gpu(workdir: Path, tiny_bert: Path, tiny_yelp: Path, *extra: str, hook_head: bool = True) -> GpuRun:
    recorder = json.dumps({"class_path": "tests.test_gpu.GpuRunRecorder",
                           "init_args": {"out": str(workdir / "record.json"), "hook_head": hook_head}})
    result = run_cli(["fit", *tiny_run_args(tiny_bert, tiny_yelp), *extra, f"--trainer.callbacks+={recorder}"],
                     cwd=workdir, fresh=True)  # CUDA, compile workers: nothing of the test process in between
    match = re.search(r"Run directory: (\S+)", result.stdout)
    assert match, result.stdout[-2000:]
    return GpuRun(workdir / match.group(1), json.loads((workdir / "record.json").read_text()), result.stdout,
                  result.stderr)


def best_checkpoint(run: GpuRun) -> Path:
    (best,) = (run.run_dir / "checkpoints").glob("epoch*.ckpt")
    return best


@pytest.fixture(scope="module")
def bf16_run(tiny_bert: Path, tiny_yelp: Path, tmp_path_factory: pytest.TempPathFactory) -> GpuRun:
    if not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bf16")
    # 3 epochs of 10 steps: ThroughputMonitor (5 warm-up steps, windows of 20) logs perf/epoch/mfu for each
    # epoch and perf/mfu once
    return fit_on_gpu(tmp_path_factory.mktemp("gpu_bf16"), tiny_bert, tiny_yelp, *BF16, "--trainer.max_epochs", "3")


def test_bf16_mixed_fit(bf16_run: GpuRun) -> None:
    assert bf16_run.record["precision"] == "bf16-mixed" and bf16_run.record["device"].startswith("cuda")
    assert bf16_run.record["head_dtypes"] == ["torch.bfloat16"]  # autocast really ran the matmuls in bf16
    logged = scalars(bf16_run.run_dir)
    assert all(math.isfinite(v) for v in logged["train/loss"])
    assert len(logged["val/acc"]) == 3
    assert best_checkpoint(bf16_run).is_file()


def test_collator_pads_to_multiples_of_8_on_gpu(bf16_run: GpuRun) -> None:
    widths = bf16_run.record["train_widths"] + bf16_run.record["val_widths"]
    assert widths and all(width % 8 == 0 for width in widths), sorted(set(widths))
    assert min(widths) < 64  # still padded per batch (max_length is 64), not to max_length


def test_mfu_is_logged_and_between_0_and_1(bf16_run: GpuRun) -> None:
    if "pass peak_flops to log perf/mfu" in bf16_run.stderr:
        pytest.skip(f"peak FLOP/s of {torch.cuda.get_device_name()} not in src/utils/flops.py's table")
    logged = scalars(bf16_run.run_dir)
    tags = ("perf/mfu", "perf/mfu_real", "perf/epoch/mfu", "perf/epoch/mfu_real")
    mfu = [value for tag in tags for value in logged.get(tag, [])]
    assert logged.get("perf/epoch/mfu") and logged.get("perf/mfu"), sorted(logged)
    assert all(0 < value < 1 for value in mfu), mfu


def test_predict_from_bf16_checkpoint(bf16_run: GpuRun, tiny_bert: Path, tiny_yelp: Path) -> None:
    run_cli(["predict", *tiny_run_args(tiny_bert, tiny_yelp), *BF16, "--ckpt_path", str(best_checkpoint(bf16_run))],
            cwd=bf16_run.run_dir.parents[2], fresh=True)
    (predictions,) = bf16_run.run_dir.rglob("predictions*.jsonl")  # RUN_DIR/eval/predict_<time>/ or RUN_DIR/
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert sorted(row["idx"] for row in rows) == list(range(TEST_ROWS))
    for row in rows:
        probs = [value for key, value in row.items() if key.startswith("prob_")]
        assert len(probs) == 5 and sum(probs) == pytest.approx(1, abs=1e-3)
        assert 0 <= row["pred_label"] < 5


def test_export_from_bf16_checkpoint(bf16_run: GpuRun, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "hf_model"
    subprocess.run([sys.executable, "-m", "src.export", str(best_checkpoint(bf16_run)), str(out)], cwd=REPO,
                   check=True, timeout=300)
    model = AutoModelForSequenceClassification.from_pretrained(out).cuda().eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # bf16-mixed keeps fp32 weights
    assert model.config.id2label[4] == "5 stars"
    with torch.no_grad():
        logits = model(**tokenizer(["the food was superb"], return_tensors="pt").to("cuda")).logits
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()


def test_16_mixed_fit(tiny_bert: Path, tiny_yelp: Path, tmp_path: Path) -> None:
    run = fit_on_gpu(tmp_path, tiny_bert, tiny_yelp, *FP16, "--trainer.max_epochs", "1")
    assert run.record["precision"] == "16-mixed"
    assert run.record["head_dtypes"] == ["torch.float16"]
    logged = scalars(run.run_dir)
    assert all(math.isfinite(v) for v in logged["train/loss"]) and len(logged["val/acc"]) == 1


def test_compiled_fit(tiny_bert: Path, tiny_yelp: Path, tmp_path: Path) -> None:
    precision = BF16 if torch.cuda.is_bf16_supported() else GPU
    run = fit_on_gpu(tmp_path, tiny_bert, tiny_yelp, *precision, "--model.compile", "true",
                     "--trainer.max_epochs", "1", hook_head=False)  # a Python hook inside the graph would break it
    assert run.record["compiled"] is True
    logged = scalars(run.run_dir)
    assert all(math.isfinite(v) for v in logged["train/loss"]) and len(logged["val/acc"]) == 1
    checkpoint = torch.load(best_checkpoint(run), map_location="cpu", weights_only=False)
    assert not any("_orig_mod" in key for key in checkpoint["state_dict"])  # plain names, loadable uncompiled
