"""`ThroughputMonitor`: training samples/s, tokens/s, padding ratio and MFU, logged under `perf/`.

Why a callback of our own rather than `lightning.pytorch.callbacks.ThroughputMonitor`: Lightning's synchronizes
the GPU after every batch, runs on rank 0 only (multiplying by the world size, which is wrong when ranks see
different batch sizes, as with `max_tokens` batching), needs the module to keep a `flops_per_batch` attribute up
to date (ours varies with each batch's padded length) and counts one kind of token, where padding is the thing
to watch here.

Peak FLOP/s: `lightning.fabric.utilities.throughput.get_available_flops` is reused as a fallback only, because
for the GPUs this template targets it does not fit (lightning 2.6): a plain "NVIDIA H200" (the H200 SXM's name)
is not recognised (None), its H200 entries are with-sparsity figures (2x the dense peak), "NVIDIA L40S" matches
its "l4" entry, and its RTX 4090 bf16 figure is the fp32 rate, not the tensor-core one. `_PEAK_FLOPS` below
holds dense tensor-core figures from NVIDIA's datasheets for those GPUs; other GPUs go to Lightning's table.
"""

import re
import time
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

PROG_BAR_KEY = "perf/samples_per_sec"

# Dense (no sparsity) peak FLOP/s per device, by matmul dtype.
_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "h100/h200 sxm": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "h100/h200 nvl": {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
    "h100 pcie": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "a100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "l40s": {"bf16": 362.05e12, "fp16": 362.05e12, "tf32": 183e12, "fp32": 91.6e12},
    "l4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "a10/a10g": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},  # A10 datasheet
    "v100 sxm": {"fp16": 125e12, "fp32": 15.7e12},  # no bf16 or tf32 on Volta
    "v100 pcie": {"fp16": 112e12, "fp32": 14e12},
    "v100s pcie": {"fp16": 130e12, "fp32": 16.4e12},
    "rtx 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},  # fp32 accumulate
}
# `torch.cuda.get_device_name` -> table key; first match wins, so specific variants come first.
_GPU_NAME_PATTERNS: list[tuple[str, str]] = [
    (r"\bg?h[12]00\b.*\bnvl\b", "h100/h200 nvl"),
    (r"\bh100\b.*\b(pcie|hbm2e)\b", "h100 pcie"),
    (r"\bg?h[12]00\b", "h100/h200 sxm"),  # "NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA GH200 480GB"
    (r"\ba100\b", "a100"),
    (r"\bl40s\b", "l40s"),
    (r"\bl4\b", "l4"),
    (r"\ba10g?\b", "a10/a10g"),
    (r"\bv100s\b", "v100s pcie"),
    (r"\bv100\b.*\bpcie\b", "v100 pcie"),
    (r"\bv100\b", "v100 sxm"),
    (r"\brtx 4090\b", "rtx 4090"),
]
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}


def lookup_peak_flops(device_name: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one GPU named like `torch.cuda.get_device_name` for `dtype` ("bf16", "fp16", "tf32",
    "fp32"); None when the GPU or the dtype is not in `_PEAK_FLOPS`."""
    name = device_name.lower()
    for pattern, key in _GPU_NAME_PATTERNS:
        if re.search(pattern, name):
            return _PEAK_FLOPS[key].get(dtype)
    return None


def matmul_dtype(precision: str) -> str | None:
    """The dtype matmuls run in under a Lightning `precision` ("bf16-mixed" -> "bf16"); fp32 before the TF32 check."""
    for prefix, dtype in (("bf16", "bf16"), ("16", "fp16"), ("32", "fp32")):
        if precision.startswith(prefix):
            return dtype
    return None  # 64-true, transformer-engine (fp8), ...: not in the table


def _tf32_enabled() -> bool:
    try:
        return torch.get_float32_matmul_precision() != "highest"
    except RuntimeError:  # torch >= 2.9 refuses when the legacy and the new precision APIs were both used
        return getattr(torch.backends.cuda.matmul, "fp32_precision", "") == "tf32"


def peak_flops_per_device(device: torch.device, precision: str) -> float | None:
    """Dense peak FLOP/s of `device` for `precision`: our table, then Lightning's; None on CPU or when unknown."""
    dtype = matmul_dtype(precision)
    if device.type != "cuda" or dtype is None:
        return None
    if dtype == "fp32" and _tf32_enabled() and torch.cuda.get_device_capability(device) >= (8, 0):
        dtype = "tf32"  # fp32 matmuls run on TF32 tensor cores (Ampere and later)
    peak = lookup_peak_flops(torch.cuda.get_device_name(device), dtype)
    if peak is None:
        try:
            peak = get_available_flops(device, _TORCH_DTYPES[dtype])  # warns itself when it does not know either
        except RuntimeError:  # its fp32 path reads the matmul precision, which newer torch may refuse
            peak = None
    return float(peak) if peak else None


def non_embedding_params(module: nn.Module) -> int:
    """Parameters outside `nn.Embedding` tables: lookups cost no FLOPs (as in Kaplan et al.'s N). Tied weights
    count once, so a decoder whose LM head is tied to its embedding would need its head added back."""
    embedding = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in module.parameters() if id(p) not in embedding)


@dataclass(frozen=True)
class FlopModel:
    """Training FLOPs of a transformer: 6 N per token (forward 2 N, backward 4 N) plus the attention scores.

    Attention (QK^T and AV) is 4 s^2 h FLOPs per layer for a row of length s forward, x3 with backward: 12 L h s^2.
    The pooler and classifier run on one token per row but are counted on every token (<1% for BERT-base);
    activation recomputation (gradient checkpointing) is not counted, as MFU conventionally leaves it out.
    """

    n_params: int  # non-embedding
    n_layers: int = 0
    hidden: int = 0

    @classmethod
    def from_module(cls, pl_module: nn.Module) -> "FlopModel":
        """N from the module (its `.model` when it wraps one); layers and width from the HF config when present."""
        module = getattr(pl_module, "model", pl_module)
        config = getattr(module, "config", None)
        n_layers, hidden = getattr(config, "num_hidden_layers", 0) or 0, getattr(config, "hidden_size", 0) or 0
        if not (n_layers and hidden):
            rank_zero_warn("ThroughputMonitor: no HF config with num_hidden_layers/hidden_size; attention FLOPs "
                           "are left out of MFU")
        return cls(non_embedding_params(module), n_layers, hidden)

    def training_flops(self, tokens: float, sum_sq_lengths: float) -> float:
        """FLOPs of forward + backward over `tokens` tokens in rows whose squared lengths sum to `sum_sq_lengths`
        (a padded batch of B rows of length s: tokens = B s, sum_sq_lengths = B s^2)."""
        return 6 * self.n_params * tokens + 12 * self.n_layers * self.hidden * sum_sq_lengths


@dataclass(frozen=True)
class Counts:
    """What all ranks processed in one measured span (summed over ranks; `seconds` is the wall time)."""

    steps: int
    samples: float
    padded_tokens: float
    padded_sq: float  # sum over rows of padded_length^2
    real_tokens: float
    real_sq: float  # sum over rows of real_length^2
    seconds: float


def throughput_metrics(counts: Counts, flop_model: FlopModel, peak_flops: float | None = None,
                       world_size: int = 1, prefix: str = "perf/") -> dict[str, float]:
    """Rates over `counts`. FLOP/s are summed over ranks, so MFU divides by `world_size` x per-device peak.

    `mfu` counts the FLOPs spent, padding included; `mfu_real` only those on real tokens (the useful share).
    """
    c, seconds = counts, counts.seconds
    spent, useful = (flop_model.training_flops(c.padded_tokens, c.padded_sq),
                     flop_model.training_flops(c.real_tokens, c.real_sq))
    metrics = {
        "samples_per_sec": c.samples / seconds,
        "real_tokens_per_sec": c.real_tokens / seconds,
        "padded_tokens_per_sec": c.padded_tokens / seconds,
        "padding_ratio": 1.0 - c.real_tokens / c.padded_tokens,
        "sec_per_step": seconds / c.steps,
        "tflops_per_device": spent / seconds / world_size / 1e12,
    }
    if peak_flops:
        metrics["mfu"] = spent / seconds / (world_size * peak_flops)
        metrics["mfu_real"] = useful / seconds / (world_size * peak_flops)
    return {prefix + key: value for key, value in metrics.items()}


class _Accumulator:
    """One rank's running counts; real-token sums stay on the device so that counting never syncs it."""

    def __init__(self) -> None:
        self.steps = 0
        self.samples = 0
        self.padded_tokens = 0
        self.padded_sq = 0
        self.real: torch.Tensor | None = None  # [sum of lengths, sum of squared lengths]
        self.seconds = 0.0

    def add_batch(self, batch: Any) -> None:
        input_ids = batch["input_ids"]
        rows, length = input_ids.shape[0], input_ids.shape[-1]
        self.samples += rows
        self.padded_tokens += rows * length
        self.padded_sq += rows * length * length
        lengths = batch.get("length")
        if lengths is None and batch.get("attention_mask") is not None:
            lengths = batch["attention_mask"].sum(dim=-1)
        if lengths is None:  # unpadded data: every token is real
            lengths = torch.full((rows,), length, device=input_ids.device)
        lengths = lengths.to(torch.int64)
        real = torch.stack((lengths.sum(), lengths.square().sum()))
        self.real = real if self.real is None else self.real + real

    def reduce(self, trainer: "pl.Trainer") -> Counts:
        """Sum over ranks (one all-reduce; call on every rank at the same step). Seconds are averaged."""
        device = trainer.strategy.root_device
        dtype = torch.float32 if device.type == "mps" else torch.float64  # exact counts up to 2^53
        real = self.real if self.real is not None else torch.zeros(2, device=device)
        host = torch.tensor([self.samples, self.padded_tokens, self.padded_sq, self.seconds], dtype=dtype)
        packed = torch.cat((host.to(device), real.to(device=device, dtype=dtype)))
        summed = trainer.strategy.reduce(packed, reduce_op="sum").tolist()
        samples, padded, padded_sq, seconds, real_tokens, real_sq = summed
        return Counts(self.steps, samples, padded, padded_sq, real_tokens, real_sq, seconds / trainer.world_size)


class ThroughputMonitor(pl.Callback):
    """Logs training throughput and MFU every `window` optimizer steps and at each epoch end.

    Keys (prefix `perf/` per window, `perf/epoch/` per epoch): `samples_per_sec` (also in the progress bar),
    `real_tokens_per_sec` (attention-mask tokens), `padded_tokens_per_sec` (`input_ids.numel()`), `padding_ratio`
    (1 - real/padded), `sec_per_step`, `tflops_per_device` (achieved), and, when the peak is known, `mfu` (FLOPs
    spent, padding included) and `mfu_real` (FLOPs on real tokens only).

    Windows are consecutive, not sliding, so the GPU is synchronized only where a window (or epoch, or validation
    run) begins or ends, never per step. Validation time is excluded; data loading and checkpointing count. Under
    DDP the counts are all-reduced (summed) over ranks at those boundaries, so rates are global (all GPUs) and
    exact even when ranks get batches of different sizes; MFU is global FLOP/s over world_size x per-device peak.

    Args:
        window: optimizer steps per measurement.
        warmup_steps: optimizer steps skipped at the start of each fit (compilation, allocator and autotuning).
        peak_flops: per-device peak FLOP/s, overriding the table (needed on CPU and for GPUs not in it); MFU is
            logged only when a peak is known.
    """

    def __init__(self, window: int = 20, warmup_steps: int = 5, peak_flops: float | None = None) -> None:
        super().__init__()
        if window < 1 or warmup_steps < 0:
            raise ValueError(f"window={window} must be >= 1 and warmup_steps={warmup_steps} >= 0")
        if peak_flops is not None and peak_flops <= 0:
            raise ValueError(f"peak_flops={peak_flops} must be positive")
        self.window, self.warmup_steps, self.peak_flops = window, warmup_steps, peak_flops
        self.flop_model: FlopModel | None = None
        self.device_peak_flops: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._window, self._epoch = _Accumulator(), _Accumulator()
        self._t0: float | None = None  # start of the timed segment; None while warming up or validating
        self._steps_done = 0
        self._last_global_step = 0
        self._paused = False

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.flop_model = FlopModel.from_module(pl_module)
        device = trainer.strategy.root_device
        self.device_peak_flops = self.peak_flops or peak_flops_per_device(device, str(trainer.precision))
        if self.device_peak_flops is None and device.type != "cpu":
            rank_zero_warn(f"ThroughputMonitor: peak FLOP/s of {device} at precision {trainer.precision} unknown; "
                           "pass peak_flops to log perf/mfu")

    def _sync(self, trainer: "pl.Trainer") -> None:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    def _lap(self, trainer: "pl.Trainer", resume: bool = True) -> None:
        """Close the timed segment into both spans (after the device finished its queued work)."""
        self._sync(trainer)
        now = time.perf_counter()
        if self._t0 is not None:
            self._window.seconds += now - self._t0
            self._epoch.seconds += now - self._t0
        self._t0 = now if resume else None

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._reset()
        self._last_global_step = trainer.global_step  # resumed runs start past 0
        if self.warmup_steps == 0:
            self._lap(trainer)

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._t0 is not None:
            self._lap(trainer)
        self._epoch = _Accumulator()

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._t0 is not None:
            self._window.add_batch(batch)
            self._epoch.add_batch(batch)
        if trainer.global_step == self._last_global_step:
            return  # accumulating gradients: the optimizer step is not done yet
        self._last_global_step = trainer.global_step
        self._steps_done += 1
        if self._t0 is None:
            if self._steps_done >= self.warmup_steps:
                self._lap(trainer)  # warm-up over: measure from here
            return
        self._window.steps += 1
        self._epoch.steps += 1
        if self._window.steps >= self.window:
            self._lap(trainer)
            counts = self._window.reduce(trainer)
            self._window = _Accumulator()
            self._emit(trainer, pl_module, counts, "perf/", on_step=True)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._t0 is not None:
            self._lap(trainer)
        if self._epoch.steps > 0:  # the same on every rank, so all of them join the all-reduce
            self._emit(trainer, pl_module, self._epoch.reduce(trainer), "perf/epoch/", on_step=False)
        self._epoch = _Accumulator()

    def on_validation_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._t0 is not None:  # validation inside fit (not the sanity check, which runs before training starts)
            self._lap(trainer, resume=False)
            self._paused = True

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._paused:
            self._lap(trainer)
            self._paused = False

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._t0 = None  # a partial last window is dropped; the epoch metrics covered it

    def _emit(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", counts: Counts, prefix: str,
              on_step: bool) -> None:
        """To callback_metrics and the progress bar via `log`, and straight to the loggers at this step, since
        `log`'s own logging happens only every `log_every_n_steps`, which need not line up with the window."""
        if counts.seconds <= 0 or counts.padded_tokens <= 0:
            return
        metrics = throughput_metrics(counts, self.flop_model, self.device_peak_flops, trainer.world_size, prefix)
        for key, value in metrics.items():  # sync_dist on epoch keys: the values are global already, but without
            # it Lightning warns under DDP; it costs one scalar all-reduce per key per epoch
            pl_module.log(key, value, prog_bar=key == PROG_BAR_KEY, logger=False, on_step=on_step,
                          on_epoch=not on_step, sync_dist=not on_step, batch_size=1)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step Lightning logs train/loss at
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
