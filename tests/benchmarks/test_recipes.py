"""`python -m benchmarks.recipes` end to end on the tiny fixtures: the tutorial's three recipes and src.cli fit."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.recipes import RECIPES, parse_args, summarize
from tests.cli_helpers import REPO


@pytest.mark.slow
def test_all_four_recipes_run_and_report(tiny_bert: Path, tiny_yelp: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    command = [sys.executable, "-m", "benchmarks.recipes", "--dataset", str(tiny_yelp), "--model", str(tiny_bert),
               "--train-samples", "16", "--eval-samples", "16", "--val-samples", "8", "--epochs", "1",
               "--max-length", "32", "--threads", "1", "--work", str(work)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    table = (work / "results.md").read_text()
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| (")]
    assert [row[0].removeprefix("| ") for row in rows] == list(RECIPES.values())
    assert rows[-1][-4:] == ["x1.00", "x1.00", "x1.00", "x1.00 |"]  # (d) is the reference
    results = {r["recipe"]: r for r in json.loads((work / "results.json").read_text())["results"]}
    assert list(results) == ["a", "b", "c", "d"]
    for r in results.values():
        assert r["samples"] == 16 and r["steps"] == 2, r["recipe"]  # 1 epoch of 16 rows in batches of 8
        assert 0 < r["seconds"] < r["wall_seconds"] and 0 < r["cpu_seconds"] < r["process_cpu_seconds"]
        assert 0 < r["real_tokens"] <= r["padded_tokens"]
        assert 0 <= r["test_accuracy"] <= 1 and 1.0 < r["train_loss"] < 2.5  # ~ln 5 for a barely trained model
        assert r["peak_rss"] > 100 * 2**20
    # the same rows, truncated the same way, reached every model; the tutorial recipes pad them all to 32
    assert len({r["real_tokens"] for r in results.values()}) == 1
    assert {results[k]["padded_tokens"] for k in "abc"} == {16 * 32}
    assert results["d"]["padded_tokens"] < 16 * 32  # dynamic padding
    keras = results["c"]
    assert keras["keras_backend"] == "torch"
    assert keras["weights_changed"] == keras["weights_total"] > 0 and keras["max_weight_change"] > 0


def test_standard_error_is_binomial() -> None:
    result = {"test_accuracy": 0.5, "seconds": 2.0, "cpu_seconds": 1.6, "samples": 16, "real_tokens": 300,
              "padded_tokens": 400, "peak_rss": 1, "peak_gpu_mem": None}
    summary = summarize(result, n_eval=100)
    assert summary["accuracy_se"] == pytest.approx(0.05)
    assert summary["samples_per_sec"] == 8 and summary["padding_ratio"] == pytest.approx(0.25)
    assert summary["cpu_ms_per_sample"] == pytest.approx(100)


def test_readme_command_parses() -> None:
    lines = [line.strip() for line in (REPO / "README.md").read_text().splitlines()]
    commands = [line for line in lines if re.match(r"(\w+=\S+ )*python -m benchmarks\.recipes\b", line)]
    assert commands, "README shows no benchmarks.recipes command"
    for command in commands:
        parse_args(shlex.split(command.split("python -m benchmarks.recipes", 1)[1]))
