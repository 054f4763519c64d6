"""Properties of the batch samplers in `src.sampler`: coverage, length grouping, token budget, determinism,
DDP sharding and resuming mid-epoch. No model or tokenizer is needed: the samplers only see lengths."""

from collections import Counter

import pytest
import torch

from src.data.samplers import EvalBatchSampler, TrainBatchSampler

Batches = list[list[int]]


def long_tailed_lengths(n: int, seed: int = 0, max_length: int = 512) -> list[int]:
    """Token counts shaped like reviews: log-normal (median ~33, mean ~44, a long tail up to `max_length`)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.empty(n).log_normal_(3.5, 0.8, generator=generator).long().clamp(1, max_length).tolist()


def padding(batches: Batches, lengths: list[int]) -> int:
    """Pad tokens the batches cost when each is padded to its longest example."""
    return sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch) for batch in batches)


def assert_each_index_once(batches: Batches, n: int) -> None:
    counts = Counter(i for batch in batches for i in batch)
    assert sorted(counts) == list(range(n)), "some examples are missing or out of range"
    assert max(counts.values()) == 1, f"repeated examples: {[i for i, c in counts.items() if c > 1][:10]}"


# ----- TrainBatchSampler, one process -----------------------------------------------------------------------
@pytest.mark.parametrize("group_by_length", [True, False])
@pytest.mark.parametrize("chunk_batches", [2, 64])
def test_train_every_example_once_fixed_batch_size(group_by_length: bool, chunk_batches: int) -> None:
    """Each epoch covers every index exactly once, in batches of at most `batch_size` (one short batch per chunk)."""
    n, batch_size = 203, 8
    sampler = TrainBatchSampler(long_tailed_lengths(n), batch_size, group_by_length=group_by_length,
                                chunk_batches=chunk_batches, seed=1)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert_each_index_once(batches, n)
        assert len(batches) == len(sampler)
        assert all(1 <= len(batch) <= batch_size for batch in batches)
        n_chunks = -(-n // (chunk_batches * batch_size)) if group_by_length else 1
        assert sum(len(batch) < batch_size for batch in batches) <= n_chunks


@pytest.mark.parametrize("max_tokens", [512, 2048])
def test_train_every_example_once_with_max_tokens(max_tokens: int) -> None:
    """With a token budget, each epoch still covers every index exactly once."""
    n = 1000
    sampler = TrainBatchSampler(long_tailed_lengths(n), 8, max_tokens=max_tokens, seed=2)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        assert_each_index_once(list(sampler), n)


def test_length_grouping_cuts_padding() -> None:
    """On long-tailed lengths, grouped batches pad less than a fifth of what random batches pad."""
    lengths = long_tailed_lengths(2000)
    grouped = padding(list(TrainBatchSampler(lengths, 16, seed=0)), lengths)
    random = padding(list(TrainBatchSampler(lengths, 16, group_by_length=False, seed=0)), lengths)
    assert grouped < 0.2 * random, f"grouped padding {grouped} vs random {random}"


def test_length_grouped_batch_order_is_shuffled() -> None:
    """Grouping sorts within chunks only: batches do not come longest-first (or shortest-first) through the epoch."""
    lengths = long_tailed_lengths(2000)
    longest = [max(lengths[i] for i in batch) for batch in TrainBatchSampler(lengths, 16, chunk_batches=8, seed=0)]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


@pytest.mark.parametrize("max_tokens", [512, 1024, 4096])
def test_max_tokens_bounds_padded_batch_size(max_tokens: int) -> None:
    """With `max_tokens` every batch's padded size (longest * count) fits the budget, and batches are well filled."""
    lengths = long_tailed_lengths(2000)
    batches = list(TrainBatchSampler(lengths, 8, max_tokens=max_tokens, seed=3))
    padded = [max(lengths[i] for i in batch) * len(batch) for batch in batches]
    assert max(padded) <= max_tokens
    assert sum(padded) / len(padded) > 0.7 * max_tokens, "batches use little of the token budget"
    assert max(len(batch) for batch in batches) > 8, "batch_size should be ignored when max_tokens is set"


def test_max_tokens_bounds_random_batches() -> None:
    """`max_tokens` is a hard budget with random batching too (data.batching=random), not only when grouped."""
    lengths = long_tailed_lengths(500)
    batches = list(TrainBatchSampler(lengths, 64, max_tokens=1024, group_by_length=False, seed=3))
    assert_each_index_once(batches, len(lengths))
    assert max(max(lengths[i] for i in batch) * len(batch) for batch in batches) <= 1024


def test_train_order_deterministic_per_seed_and_epoch() -> None:
    """Same seed and epoch give the same batches (also from a fresh sampler); epochs and seeds differ."""
    lengths = long_tailed_lengths(300)
    sampler = TrainBatchSampler(lengths, 8, seed=7)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0
    assert list(TrainBatchSampler(lengths, 8, seed=7)) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    assert sorted(map(sorted, epoch1)) != sorted(map(sorted, epoch0)), "epochs should regroup examples too"
    fresh = TrainBatchSampler(lengths, 8, seed=7)
    fresh.set_epoch(1)
    assert list(fresh) == epoch1
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    assert list(TrainBatchSampler(lengths, 8, seed=8)) != epoch0


# ----- TrainBatchSampler, several processes ----------------------------------------------------------------
@pytest.mark.parametrize("num_replicas", [2, 3])
@pytest.mark.parametrize("max_tokens", [None, 1024])
def test_ddp_ranks_disjoint_cover_all_equal_length(num_replicas: int, max_tokens: int | None) -> None:
    """Ranks get equally many batches; apart from whole batches repeated to even them out (fewer than
    num_replicas), batches across ranks are disjoint and together cover every example."""
    n = 205  # 26 batches of 8: not divisible by 3; with max_tokens the count is whatever packing gives
    lengths = long_tailed_lengths(n, seed=4)
    for epoch in range(2):
        ranks = [TrainBatchSampler(lengths, 8, max_tokens=max_tokens, seed=5, num_replicas=num_replicas, rank=r)
                 for r in range(num_replicas)]
        for sampler in ranks:
            sampler.set_epoch(epoch)
        per_rank = [list(sampler) for sampler in ranks]
        assert len({len(batches) for batches in per_rank}) == 1, [len(batches) for batches in per_rank]
        assert all(len(sampler) == len(per_rank[0]) for sampler in ranks)

        single = TrainBatchSampler(lengths, 8, max_tokens=max_tokens, seed=5)
        single.set_epoch(epoch)
        n_global = len(single)
        all_batches = [tuple(batch) for batches in per_rank for batch in batches]
        distinct = set(all_batches)
        repeats = len(all_batches) - len(distinct)
        assert repeats == len(per_rank[0]) * num_replicas - n_global < num_replicas
        assert_each_index_once([list(batch) for batch in distinct], n)
        assert distinct == {tuple(batch) for batch in single}, "ranks must split the one global batch list"


def test_ddp_wraps_around_when_padding_is_needed() -> None:
    """The size is chosen so ranks need padding: some batch is seen by two ranks, the rest by exactly one."""
    lengths = long_tailed_lengths(100)
    ranks = [list(TrainBatchSampler(lengths, 8, seed=0, num_replicas=3, rank=r)) for r in range(3)]  # 13 batches
    counts = Counter(tuple(batch) for batches in ranks for batch in batches)
    assert sorted(counts.values()) == [1] * 11 + [2] * 2


# ----- resuming mid-epoch ------------------------------------------------------------------------------------
@pytest.mark.parametrize("start_batch", [0, 1, 5, 12, 13])
def test_start_batch_skips_then_resets(start_batch: int) -> None:
    """`start_batch = k` yields the full epoch minus its first k batches, once; the next iteration is full."""
    sampler = TrainBatchSampler(long_tailed_lengths(100), 8, seed=0)  # 13 batches
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.start_batch = start_batch
    assert list(sampler) == full[start_batch:]
    assert sampler.start_batch == 0
    assert list(sampler) == full
    assert len(sampler) == len(full)


def test_start_batch_on_a_fresh_sampler_resumes_the_same_epoch() -> None:
    """A new sampler (as after a restart) set to the saved epoch and position continues where the old one stopped."""
    lengths = long_tailed_lengths(100)
    old = TrainBatchSampler(lengths, 8, seed=3, num_replicas=2, rank=1)
    old.set_epoch(4)
    full = list(old)
    new = TrainBatchSampler(lengths, 8, seed=3, num_replicas=2, rank=1)
    new.set_epoch(4)
    new.start_batch = 3
    assert list(new) == full[3:]


def test_sampler_state_round_trip() -> None:
    """The sampler saves (epoch, batches the loop consumed); a fresh sampler loading it yields the remaining batches
    and keeps counting from there."""
    lengths = long_tailed_lengths(100)
    first = TrainBatchSampler(lengths, 8, seed=1)
    first.set_epoch(1)
    full = list(first)
    iterator = iter(first)
    seen = []
    for _ in range(4):
        seen.append(next(iterator))
        first.batch_consumed()
    assert seen == full[:4]
    state = first.state_dict()
    assert state == {"epoch": 1, "batches_received": 4}

    resumed = TrainBatchSampler(lengths, 8, seed=1)
    resumed.load_state_dict(state)
    iterator = iter(resumed)
    assert next(iterator) == full[4]
    resumed.batch_consumed()
    assert resumed.state_dict() == {"epoch": 1, "batches_received": 5}
    assert list(iterator) == full[5:]
    assert list(resumed) == full, "the epoch after resuming is complete again"


def test_sampler_state_counts_consumed_not_prefetched_batches() -> None:
    """Batches handed out ahead of the loop (loader workers, prefetching) are not in the saved position: only
    those reported consumed are, so a resume does not skip batches that were never trained on."""
    lengths = long_tailed_lengths(100)
    sampler = TrainBatchSampler(lengths, 8, seed=2)
    sampler.set_epoch(3)
    full = list(sampler)
    iterator = iter(sampler)
    prefetched = [next(iterator) for _ in range(6)]
    for _ in range(2):
        sampler.batch_consumed()
    assert prefetched == full[:6]
    assert sampler.state_dict() == {"epoch": 3, "batches_received": 2}
    resumed = TrainBatchSampler(lengths, 8, seed=2)
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == full[2:]


# ----- EvalBatchSampler ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_replicas", [1, 2, 3])
@pytest.mark.parametrize("n", [61, 100])
def test_eval_every_example_exactly_once_across_ranks(num_replicas: int, n: int) -> None:
    """Union over ranks is every index once (no DistributedSampler-style repeats); shards differ by at most one."""
    lengths = long_tailed_lengths(n, seed=6)
    per_rank = [list(EvalBatchSampler(lengths, 8, num_replicas=num_replicas, rank=r)) for r in range(num_replicas)]
    assert_each_index_once([batch for batches in per_rank for batch in batches], n)
    sizes = [sum(map(len, batches)) for batches in per_rank]
    assert max(sizes) - min(sizes) <= 1
    for batches in per_rank:
        assert all(1 <= len(batch) <= 8 for batch in batches)
        assert sum(len(batch) < 8 for batch in batches) <= 1


@pytest.mark.parametrize("num_replicas", [1, 2, 3])
def test_eval_batches_sorted_by_length(num_replicas: int) -> None:
    """Within a rank, examples come longest first, so each batch holds neighbouring lengths (little padding)."""
    lengths = long_tailed_lengths(101, seed=7)
    for rank in range(num_replicas):
        sampler = EvalBatchSampler(lengths, 8, num_replicas=num_replicas, rank=rank)
        flat = [lengths[i] for batch in sampler for i in batch]
        assert flat == sorted(flat, reverse=True)
        assert len(sampler) == len(list(sampler))


def test_eval_rank_without_examples_yields_no_batches() -> None:
    """With fewer examples than ranks, a rank whose shard is empty gets no batches (not an empty batch)."""
    lengths = [5, 3]
    assert list(EvalBatchSampler(lengths, 4, num_replicas=3, rank=2)) == []
