"""A DataLoader whose position inside the epoch is saved in checkpoints and restored on resume.

`TextClassificationDataModule.state_dict` puts this loader's `state_dict()` in every checkpoint and hands it
back on resume
(Lightning's own stateful-loader restore comes too late when `configure_optimizers` reads
`estimated_stepping_batches`). We count the batches the training loop has *received* (not what the sampler
produced, which runs ahead with workers/prefetch), so a resumed run skips exactly those batches and then sees
the same remaining batches in the same order. ~20 lines instead of a torchdata dependency.
"""

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from src.data.samplers import TrainBatchSampler


class ResumableDataLoader(DataLoader):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # a private generator: creating an iterator must not draw from the global RNG (dropout, resume)
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, TrainBatchSampler):
            raise TypeError("ResumableDataLoader needs a TrainBatchSampler")
        self.batches_received = 0

    def __iter__(self) -> Iterator[Any]:
        self.batches_received = self.batch_sampler.start_batch
        for batch in super().__iter__():
            self.batches_received += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "batches_received": self.batches_received}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.set_epoch(state["epoch"])
        self.batch_sampler.start_batch = state["batches_received"]
