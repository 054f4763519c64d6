"""Batch samplers: length-grouped training batches and exactly-once evaluation batches, both DDP-aware.

Why our own samplers: Lightning's DistributedSampler repeats examples to even out ranks (skewing eval metrics),
and neither torch nor Lightning groups by length. HF's `LengthGroupedSampler` does, but it is single-process
and has no token budget. Both samplers here shard by rank themselves, so the Trainer runs with
`use_distributed_sampler=False` (set in `configs/defaults.yaml`). The data module does not check it: under DDP
with it on, Lightning itself refuses to inject its sampler into these (they are not `BatchSampler`s), with an
error naming that setting.
"""

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class TrainBatchSampler(Sampler[list[int]]):
    """Shuffled training batches, optionally of similar length, a distinct shard per rank.

    Each epoch: a seeded permutation is cut into chunks of `chunk_batches * batch_size` examples; with
    `group_by_length`, each chunk is sorted by length and cut into batches, so a batch holds similar
    lengths and little padding, while chunks keep batches random across the dataset. Batch order is then
    shuffled. With `max_tokens`, a batch takes as many examples as fit `max_tokens` padded tokens
    (batch_size is ignored). Every rank builds the same global list and takes every world_size-th batch;
    the list is wrapped around so each rank gets the same number of batches.

    Resuming: `state_dict()` is the epoch and the batches the training loop has consumed in it, which the loop
    reports with `batch_consumed()` (iteration cannot tell: loader workers and prefetching run ahead of the loop);
    `load_state_dict()` makes the next iteration skip those batches (`start_batch`), once.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        max_tokens: int | None = None,
        group_by_length: bool = True,
        chunk_batches: int = 64,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.group_by_length = group_by_length
        self.chunk_batches = chunk_batches
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_batch = 0
        self.batches_consumed = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_batch = 0  # a resume position belongs to the epoch it was saved in
        self.epoch = epoch

    def batch_consumed(self) -> None:
        """The training loop has taken one more batch of this epoch."""
        self.batches_consumed += 1

    def state_dict(self) -> dict[str, int]:
        # "batches_received": the name checkpoints of the earlier ResumableDataLoader used, so they still resume
        return {"epoch": self.epoch, "batches_received": self.batches_consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.set_epoch(state["epoch"])
        self.start_batch = state["batches_received"]

    @property
    def sampler(self) -> "TrainBatchSampler":
        """Lightning calls `set_epoch` at every epoch start on `loader.sampler` and `loader.batch_sampler.sampler`
        only (`_set_sampler_epoch`), never on the batch sampler itself: this is how it reaches ours."""
        return self

    def _global_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        if not self.group_by_length:
            return self._pack(order)
        chunk_size = self.chunk_batches * (self.batch_size if self.max_tokens is None else self._typical_batch_size())
        batches: list[list[int]] = []
        for chunk in order.split(chunk_size):
            chunk = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
            batches.extend(self._pack(chunk))
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffled]

    def _typical_batch_size(self) -> int:
        return max(1, self.max_tokens // max(1, int(self.lengths.float().mean())))

    def _pack(self, sorted_chunk: torch.Tensor) -> list[list[int]]:
        """Cut indices (sorted by decreasing length when grouping) into batches: fixed size, or as many as fit
        `max_tokens` padded tokens."""
        if self.max_tokens is None:
            return [batch.tolist() for batch in sorted_chunk.split(self.batch_size)]
        batches, current, longest = [], [], 0
        for index, length in zip(sorted_chunk.tolist(), self.lengths[sorted_chunk].tolist(), strict=True):
            longest = max(longest, length) if current else length
            if current and longest * (len(current) + 1) > self.max_tokens:
                batches.append(current)
                current, longest = [], length
            current.append(index)
        if current:
            batches.append(current)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            batches = self._global_batches()
            per_rank = math.ceil(len(batches) / self.num_replicas)
            padded = (batches * math.ceil(per_rank * self.num_replicas / max(1, len(batches))))[
                : per_rank * self.num_replicas
            ]
            self._cache = (self.epoch, padded[self.rank :: self.num_replicas])
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()[self.start_batch :]
        self.batches_consumed, self.start_batch = self.start_batch, 0
        yield from batches

    def __len__(self) -> int:
        return len(self._rank_batches())


class EvalBatchSampler(Sampler[list[int]]):
    """Every example exactly once across ranks (strided shard, no repeats), batched by length for less padding.

    Ranks may get one example fewer than others; metrics are synced by torchmetrics at epoch end, so uneven
    shards are fine and no example is counted twice. Predictions carry their row index to restore input order.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, num_replicas: int = 1, rank: int = 0) -> None:
        shard = torch.arange(rank, len(lengths), num_replicas)
        shard_lengths = torch.as_tensor(lengths, dtype=torch.long)[shard]
        ordered = shard[torch.argsort(shard_lengths, descending=True, stable=True)]
        self.batches = [batch.tolist() for batch in ordered.split(batch_size) if len(batch)]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches

    def __len__(self) -> int:
        return len(self.batches)
