"""Padding and compute per real token of each recipe's batching, at the benchmark's size and at full-data sizes.

No training: the batches each sampler would form on the synthetic corpus's token lengths (MiniLM tokenizer,
truncated to 512), averaged over 5 shuffles. This separates what batching saves from framework speed, and shows how
the (b)/(c) gap depends on the number of training reviews: HF's `LengthGroupedSampler` sorts within megabatches of
`min(N // 32, 50) * 8` reviews (80 at N=320, 400 from N=1,600), the project's `TrainBatchSampler` within chunks
of 64 batches (512 reviews).

    python -m benchmarks.padding [--dataset DIR] [--sizes 320,4000,90000]

"compute / real token" is training FLOPs (6 N per token + attention, as `src.utils.flops.FlopModel`, MiniLM
geometry) per real token, relative to the project's default batching: the throughput ratio to expect when the run
is compute-bound.
"""

import argparse
from pathlib import Path

import datasets
import torch
from transformers import AutoTokenizer
from transformers.trainer_pt_utils import get_length_grouped_indices

from benchmarks.synthetic_reviews import DEFAULT_TOKENIZER
from src.data.samplers import TrainBatchSampler
from src.utils.flops import FlopModel
from src.utils.pretrained import load_pretrained

REPO = Path(__file__).resolve().parent.parent
MINILM = FlopModel(n_params=10_797_317, n_layers=6, hidden=384)  # non-embedding parameters of all-MiniLM-L6-v2
BATCH, MAX_LENGTH, SHUFFLES = 8, 512, 5


def batches_for(recipe: str, lengths: list[int], seed: int, max_tokens: int) -> list[list[int]]:
    n = len(lengths)
    generator = torch.Generator().manual_seed(seed)
    if recipe in ("tutorial", "random"):
        order = torch.randperm(n, generator=generator).tolist()
        return [order[i:i + BATCH] for i in range(0, n, BATCH)]
    if recipe == "hf_group_by_length":
        order = get_length_grouped_indices(lengths, BATCH, generator=generator)
        return [order[i:i + BATCH] for i in range(0, n, BATCH)]
    budget = max_tokens if recipe == "project_max_tokens" else None
    return list(TrainBatchSampler(lengths, BATCH, max_tokens=budget, seed=seed))


def measure(recipe: str, lengths: list[int], max_tokens: int) -> dict[str, float]:
    steps = padded = real = flops = 0.0
    for seed in range(SHUFFLES):
        for batch in batches_for(recipe, lengths, seed, max_tokens):
            rows = [lengths[i] for i in batch]
            width = MAX_LENGTH if recipe == "tutorial" else max(rows)
            steps += 1
            padded += width * len(rows)
            real += sum(rows)
            flops += MINILM.training_flops(width * len(rows), width * width * len(rows))
    return {"steps": steps / SHUFFLES, "padding": 1 - real / padded, "flops_per_real_token": flops / real}


RECIPES = {
    "tutorial": "(a) random batches, pad to 512",
    "random": "random batches, dynamic padding",
    "hf_group_by_length": "(b) HF group_by_length, dynamic padding",
    "project": "(c) TrainBatchSampler, dynamic padding",
    "project_max_tokens": "(c') TrainBatchSampler, max_tokens",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=REPO / "benchmarks" / "out" / "prep" / "synthetic-yelp-100000",
                        help="local dataset dir (default: the prep_time corpus; falls back to the throughput one)")
    parser.add_argument("--sizes", default="320,1600,4000,90000")
    parser.add_argument("--max-tokens", type=int, default=2048)
    args = parser.parse_args(argv)
    dataset = args.dataset
    if not dataset.exists():
        dataset = REPO / "benchmarks" / "out" / "synthetic-yelp"
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, DEFAULT_TOKENIZER)
    train = datasets.load_dataset(str(dataset), split="train").shuffle(seed=42)
    sizes = [n for n in map(int, args.sizes.split(",")) if n <= len(train)]
    texts = train.select(range(max(sizes)))["text"]
    all_lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=MAX_LENGTH)["input_ids"]]

    print(f"{dataset.name}: batches of {BATCH} (max_tokens {args.max_tokens} for c'), {SHUFFLES} shuffles each\n")
    print("| reviews | batching | steps | padding | compute / real token vs (c) |")
    print("|---|---|---|---|---|")
    for n in sizes:
        lengths = all_lengths[:n]
        results = {recipe: measure(recipe, lengths, args.max_tokens) for recipe in RECIPES}
        base = results["project"]["flops_per_real_token"]
        for recipe, label in RECIPES.items():
            r = results[recipe]
            print(f"| {n} | {label} | {r['steps']:.0f} | {r['padding']:.1%} | "
                  f"x{r['flops_per_real_token'] / base:.2f} |")


if __name__ == "__main__":
    main()
