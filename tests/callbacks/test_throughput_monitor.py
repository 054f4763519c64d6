"""ThroughputMonitor: the FLOP/MFU arithmetic by hand, the peak table, and the values a tiny CPU fit logs."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import BertConfig, BertForSequenceClassification

from src.callbacks.throughput_monitor import ThroughputMonitor
from src.data import TextClassificationDataModule
from src.model import SequenceClassifier
from src.utils import flops
from src.utils.flops import Counts, FlopModel, lookup_peak_flops, throughput_metrics

RATE_KEYS = ("samples_per_sec", "real_tokens_per_sec", "padded_tokens_per_sec", "padding_ratio", "sec_per_step",
             "tflops_per_device")


def test_training_flops_of_a_padded_batch() -> None:
    model = FlopModel(n_params=1000, n_layers=2, hidden=32)
    rows, length = 4, 16
    # 6 N B s = 6*1000*64; attention 12 L h s^2 B = 12*2*32*256*4
    assert model.training_flops(rows * length, rows * length**2) == 384_000 + 786_432


def test_throughput_metrics_by_hand() -> None:
    model = FlopModel(n_params=1000, n_layers=2, hidden=32)
    # 2 ranks, 4 steps in 2 s: 16 rows of 16 padded tokens; real rows of lengths 8 (x8) and 16 (x8)
    counts = Counts(steps=4, samples=16, padded_tokens=256, padded_sq=16 * 256, real_tokens=192,
                    real_sq=8 * 64 + 8 * 256, seconds=2.0)
    spent = 6 * 1000 * 256 + 12 * 2 * 32 * 16 * 256  # 1_536_000 + 3_145_728
    useful = 6 * 1000 * 192 + 12 * 2 * 32 * (8 * 64 + 8 * 256)  # 1_152_000 + 1_966_080
    m = throughput_metrics(counts, model, peak_flops=1e6, world_size=2)
    assert m["perf/samples_per_sec"] == 8
    assert m["perf/real_tokens_per_sec"] == 96
    assert m["perf/padded_tokens_per_sec"] == 128
    assert m["perf/padding_ratio"] == 0.25
    assert m["perf/sec_per_step"] == 0.5
    assert m["perf/tflops_per_device"] == pytest.approx(spent / 2 / 2 / 1e12)
    assert m["perf/mfu"] == pytest.approx(spent / 2 / (2 * 1e6))
    assert m["perf/mfu_real"] == pytest.approx(useful / 2 / (2 * 1e6))
    assert "perf/mfu" not in throughput_metrics(counts, model, peak_flops=None)


def test_flop_model_of_a_small_bert() -> None:
    h, i, layers, labels = 32, 64, 2, 5
    config = BertConfig(vocab_size=50, hidden_size=h, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=i, max_position_embeddings=128, num_labels=labels)
    per_layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h  # attention, LN, FFN, LN
    head = 2 * h + (h * h + h) + (h * labels + labels)  # embedding LayerNorm, pooler, classifier
    model = FlopModel.from_module(BertForSequenceClassification(config))
    assert model == FlopModel(n_params=layers * per_layer + head, n_layers=layers, hidden=h)


@pytest.mark.parametrize(("name", "precision", "expected"), [
    ("NVIDIA H200", "bf16-mixed", 989.4e12),
    ("NVIDIA GH200 480GB", "bf16-true", 989.4e12),
    ("NVIDIA H100 80GB HBM3", "16-mixed", 989.4e12),
    ("NVIDIA H100 PCIe", "bf16-mixed", 756e12),
    ("NVIDIA H200 NVL", "bf16-mixed", 835.5e12),
    ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312e12),
    ("NVIDIA A100-SXM4-80GB", "32-true", 19.5e12),
    ("NVIDIA L4", "bf16-mixed", 121e12),
    ("NVIDIA L40S", "bf16-mixed", 362.05e12),
    ("NVIDIA A10G", "16-mixed", 125e12),
    ("Tesla V100-SXM2-16GB", "16-mixed", 125e12),
    ("Tesla V100-PCIE-32GB", "16-mixed", 112e12),
    ("Tesla V100-SXM2-16GB", "bf16-mixed", None),  # Volta has no bf16 tensor cores
    ("NVIDIA GeForce RTX 4090", "bf16-mixed", 165.2e12),
    ("NVIDIA H20", "bf16-mixed", None),  # not an H200
])
def test_peak_flops_table(name: str, precision: str, expected: float | None) -> None:
    assert lookup_peak_flops(name, flops.matmul_dtype(precision)) == expected


def test_peak_flops_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert flops.peak_flops_per_device(torch.device("cpu"), "32-true") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(flops, "_tf32_enabled", lambda: True)
    assert flops.peak_flops_per_device(torch.device("cuda", 0), "32-true") == 156e12  # TF32 tensor cores
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")  # not ours: Lightning's
    assert flops.peak_flops_per_device(torch.device("cuda", 0), "16-mixed") == 65e12


def _fit(tmp_path: Path, tiny_bert: Path, tiny_yelp: Path, padding: str, monitor: ThroughputMonitor,
         **trainer_kwargs) -> tuple[pl.Trainer, dict[str, list[float]]]:
    """A tiny CPU fit: 48 training rows in 6 batches of 8 per epoch, validation of 16 rows after each epoch."""
    data = TextClassificationDataModule(dataset=str(tiny_yelp), tokenizer_name_or_path=str(tiny_bert), max_length=64,
                                padding=padding, batch_size=8, train_size=48, eval_size=16)
    model = SequenceClassifier(model_name_or_path=str(tiny_bert))
    trainer = pl.Trainer(logger=TensorBoardLogger(tmp_path / padding), log_every_n_steps=1, accelerator="cpu",
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[monitor],
                         **trainer_kwargs)
    trainer.fit(model, datamodule=data)
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return trainer, scalars


def _check_sane(scalars: dict[str, list[float]], prefix: str) -> None:
    for key in RATE_KEYS:
        assert scalars.get(prefix + key), f"{prefix + key} not logged: {sorted(scalars)}"
    assert all(v > 0 for v in scalars[prefix + "samples_per_sec"])
    real, padded = scalars[prefix + "real_tokens_per_sec"], scalars[prefix + "padded_tokens_per_sec"]
    assert all(0 < r <= p for r, p in zip(real, padded, strict=True))
    assert all(0 <= v < 1 for v in scalars[prefix + "padding_ratio"])


def _ratios(scalars: dict[str, list[float]], a: str, b: str, product: bool = False) -> list[float]:
    """Per window: perf/a / perf/b (or a * b), as logged at the same steps."""
    pairs = zip(scalars["perf/" + a], scalars["perf/" + b], strict=True)
    return [x * y if product else x / y for x, y in pairs]


def test_fit_logs_sane_throughput(tmp_path: Path, tiny_bert: Path, tiny_yelp: Path) -> None:
    # measured: steps 3..12 (2 warm-up) -> windows end at steps 5, 8, 11; epochs of 6 steps
    longest, tb_longest = _fit(tmp_path, tiny_bert, tiny_yelp, "longest",
                               ThroughputMonitor(window=3, warmup_steps=2, peak_flops=1e12), max_steps=12)
    # gradient accumulation: 2 batches per step, 3 steps per epoch; measured steps 3..8 -> windows end at 5, 8
    maxlen, tb_maxlen = _fit(tmp_path, tiny_bert, tiny_yelp, "max_length",
                             ThroughputMonitor(window=3, warmup_steps=2), max_steps=8, accumulate_grad_batches=2)
    for scalars, windows, epochs in ((tb_longest, 3, 2), (tb_maxlen, 2, 3)):
        _check_sane(scalars, "perf/")
        _check_sane(scalars, "perf/epoch/")
        assert len(scalars["perf/samples_per_sec"]) == windows
        assert len(scalars["perf/epoch/samples_per_sec"]) == epochs
    # every batch holds 8 rows (16 per step with accumulation); max_length pads every row to 64 tokens
    assert _ratios(tb_longest, "samples_per_sec", "sec_per_step", product=True) == pytest.approx([8] * 3)
    assert _ratios(tb_maxlen, "samples_per_sec", "sec_per_step", product=True) == pytest.approx([16] * 2)
    assert _ratios(tb_maxlen, "padded_tokens_per_sec", "samples_per_sec") == pytest.approx([64] * 2)
    assert min(tb_maxlen["perf/epoch/padding_ratio"]) > max(tb_longest["perf/epoch/padding_ratio"])
    # MFU only with a peak on CPU; the FLOPs spent include those on real tokens
    assert all(0 < mfu < 1 for mfu in tb_longest["perf/mfu"])
    assert all(0 < share <= 1 for share in _ratios(tb_longest, "mfu_real", "mfu"))
    assert not any("mfu" in key for key in tb_maxlen)
    # the latest window is in callback_metrics and the progress bar
    assert longest.callback_metrics["perf/samples_per_sec"] == pytest.approx(tb_longest["perf/samples_per_sec"][-1])
    assert "perf/samples_per_sec" in maxlen.progress_bar_metrics
