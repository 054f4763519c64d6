"""Keep the global random number generators in checkpoints, so a resumed run draws what an uninterrupted one drew.

Lightning restores weights, optimizer, LR schedule and loop counters, and the data module restores the position
in the epoch (`TrainBatchSampler.state_dict`), but the global RNGs (torch, CUDA, numpy, `random`) are not saved:
after a resume, dropout masks would differ from those of the run that was never interrupted. `RngStateCheckpoint`
stores every rank's RNG states in the checkpoint and puts them back just before the first training batch after the
resume, i.e. after everything else that draws from them while resuming (the sanity check's dataloader, model
setup), so training continues with exactly the random stream it was using when the checkpoint was written.
"""

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

RngStates = dict[str, Any]


def collect_rng_states(cuda_device: torch.device | None = None) -> RngStates:
    """This process's global RNG states, as tensors and plain Python values (loadable with `weights_only=True`)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss = random.getstate()
    states: RngStates = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian),
        "python": (version, list(python_state), gauss),
    }
    if cuda_device is not None and cuda_device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(cuda_device)
    return states


def set_rng_states(states: RngStates, cuda_device: torch.device | None = None) -> None:
    """Put back states from `collect_rng_states`."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    version, python_state, gauss = states["python"]
    random.setstate((version, tuple(python_state), gauss))
    if "cuda" in states and cuda_device is not None and cuda_device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], cuda_device)


class RngStateCheckpoint(Callback):
    """Save each rank's global RNG states in checkpoints; restore them right before the first batch after resume.

    Under DDP the ranks' states differ (their batches differ), so saving gathers all of them (checkpoints are
    written collectively) and each rank restores its own. Resuming with another number of processes cannot
    reproduce the old random stream; the states are then left as seeded, with a warning.
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._pending: RngStates | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _cuda_device(self) -> torch.device | None:
        return self._trainer.strategy.root_device if self._trainer is not None else None

    def state_dict(self) -> dict[str, Any]:
        states = collect_rng_states(self._cuda_device())
        if self._trainer is None or self._trainer.world_size == 1 or not dist.is_initialized():
            return {"per_rank": [states]}
        gathered: list[RngStates | None] = [None] * self._trainer.world_size
        dist.all_gather_object(gathered, states)
        return {"per_rank": gathered}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict["per_rank"]
        rank, world_size = (self._trainer.global_rank, self._trainer.world_size) if self._trainer else (0, 1)
        if len(per_rank) != world_size:
            rank_zero_warn(f"the checkpoint holds RNG states of {len(per_rank)} processes, this run has {world_size}: "
                           "random draws (dropout) after the resume will differ from the interrupted run")
            return
        self._pending = per_rank[rank]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending is not None:
            set_rng_states(self._pending, self._cuda_device())
            self._pending = None
