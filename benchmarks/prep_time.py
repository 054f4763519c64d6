"""Data-preparation time of `TextClassificationDataModule` on a 100k-review synthetic corpus: first run vs cached run.

Each run is a fresh process (as two successive `fit` invocations are) that builds the data module the way the CLI
does (MiniLM tokenizer, max_length 512, the default 10% validation carve) and times `prepare_data()` and
`setup("fit")`. The first run starts from empty caches (its own HF datasets cache and tokenized-data cache), so
it includes reading the parquet files into Arrow, drawing the splits, tokenizing (`Dataset.map`, with the data
module's default number of processes) and saving; the second run finds the tokenized cache and only loads.

    python -m benchmarks.prep_time                 # 100,000 train + 10,000 test reviews
    python -m benchmarks.prep_time --reviews 20000 --test 2000
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.synthetic_reviews import DEFAULT_TOKENIZER, write_corpus
from benchmarks.throughput import peak_rss_bytes

REPO = Path(__file__).resolve().parent.parent


def _time_phases() -> dict[str, float]:
    """Wrap the data module's steps (in this process only, src untouched) to see where prepare_data's time goes."""
    from src.data import datamodule

    phases: dict[str, float] = {}
    for name in ("load_raw", "draw_splits", "cache_path", "tokenize_splits"):
        function = getattr(datamodule, name)

        def timed(*args, _function=function, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                phases[_name] = phases.get(_name, 0.0) + time.perf_counter() - start

        setattr(datamodule, name, timed)
    return phases


def child(dataset: Path, cache: Path) -> dict:
    """One run, timed inside the process (imports excluded, tokenizer load included)."""
    from src.data import TextClassificationDataModule

    start = time.perf_counter()
    data = TextClassificationDataModule(dataset=str(dataset), tokenizer_name_or_path=DEFAULT_TOKENIZER, max_length=512,
                                cache_dir=str(cache))
    data.tokenizer  # noqa: B018 - load it here so it is timed apart from prepare_data
    phases = _time_phases()
    loaded = time.perf_counter()
    data.prepare_data()
    prepared = time.perf_counter()
    phases = {**phases, "save_and_rest": (prepared - loaded) - sum(phases.values())}  # a copy: setup adds more
    data.setup("fit")
    set_up = time.perf_counter()
    next(iter(data.train_dataloader()))
    first_batch = time.perf_counter()
    return {
        "tokenizer_s": loaded - start,
        "prepare_data_s": prepared - loaded,
        "setup_s": set_up - prepared,
        "first_batch_s": first_batch - set_up,
        "phases": phases,
        "rows": {name: len(split) for name, split in data.splits.items()},
        "peak_rss": peak_rss_bytes(),
        "num_proc_default": 1 if len(data.splits["train"]) < 20_000 else min(8, os.cpu_count() or 1),
    }


def run(dataset: Path, work: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO),
           "HF_DATASETS_CACHE": str(work / "hf-datasets-cache")}
    command = [sys.executable, "-m", "benchmarks.prep_time", "--child", "--dataset", str(dataset),
               "--work", str(work)]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    process = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"prep run failed:\n{process.stdout[-2000:]}\n{process.stderr[-3000:]}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    result.update(process_s=wall, load_before=load)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=int, default=100_000, help="train reviews in the corpus")
    parser.add_argument("--test", type=int, default=10_000, help="test reviews in the corpus")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "prep")
    parser.add_argument("--dataset", type=Path, default=None, help="default: WORK/synthetic-yelp-N (generated)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = args.work.resolve()
    if args.child:
        print(json.dumps(child(args.dataset, work / "tokenized")))
        return

    dataset = (args.dataset or work / f"synthetic-yelp-{args.reviews}").resolve()
    if not any((dataset / "data").glob("train-*.parquet")):
        start = time.perf_counter()
        print(f"generating {args.reviews} + {args.test} synthetic reviews in {dataset} ...", flush=True)
        write_corpus(dataset, args.reviews, args.test, seed=0)
        print(f"generated in {time.perf_counter() - start:.0f} s\n", flush=True)
    for stale in ("tokenized", "hf-datasets-cache"):  # the first run must start cold
        shutil.rmtree(work / stale, ignore_errors=True)
    first = run(dataset, work)
    second = run(dataset, work)

    rows = [
        ("tokenizer load (s)", "tokenizer_s", "{:.1f}"),
        ("prepare_data (s)", "prepare_data_s", "{:.1f}"),
        ("setup('fit') (s)", "setup_s", "{:.2f}"),
        ("first training batch (s)", "first_batch_s", "{:.2f}"),
        ("whole process (s, incl. imports)", "process_s", "{:.1f}"),
        ("peak RSS (GiB, VmHWM)", "peak_rss", "{:.2f}"),
        ("load average before", "load_before", "{:.2f}"),
    ]
    split_rows = ", ".join(f"{name} {n}" for name, n in first["rows"].items())
    lines = [f"TextClassificationDataModule on {dataset.name}: {split_rows} rows, MiniLM tokenizer, max_length 512, "
             f"tokenize_num_proc default for train ({first['num_proc_default']} here), {os.cpu_count()} CPUs", "",
             "| | first run (tokenize + cache) | second run (cached) |", "|---|---|---|"]
    for label, key, fmt in rows:
        scale = 2**30 if key == "peak_rss" else 1
        lines.append(f"| {label} | {fmt.format(first[key] / scale)} | {fmt.format(second[key] / scale)} |")
    lines += [f"| prepare_data: {name.strip('_')} (s) | {first['phases'].get(name, 0):.2f} | "
              f"{second['phases'].get(name, 0):.2f} |" for name in first["phases"]]
    speedup = first["prepare_data_s"] / second["prepare_data_s"]
    lines.append(f"\nprepare_data: cached run x{speedup:.0f} faster")
    text = "\n".join(lines)
    print(text)
    (work / "results.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps({"first": first, "second": second}, indent=1))


if __name__ == "__main__":
    main()
