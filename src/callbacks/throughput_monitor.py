"""`ThroughputMonitor`: training samples/s, tokens/s, padding ratio and MFU, logged under `perf/`.

Why a callback of our own rather than `lightning.pytorch.callbacks.ThroughputMonitor`: Lightning's synchronizes
the GPU after every batch, runs on rank 0 only (multiplying by the world size, which is wrong when ranks see
different batch sizes, as with `max_tokens` batching), needs the module to keep a `flops_per_batch` attribute up
to date (ours varies with each batch's padded length) and counts one kind of token, where padding is the thing
to watch here.
"""

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from src.utils.flops import Counts, FlopModel, peak_flops_per_device, throughput_metrics

PROG_BAR_KEY = "perf/samples_per_sec"


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
        step = trainer.global_step  # the step Lightning logs train/loss at (one optimizer)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
