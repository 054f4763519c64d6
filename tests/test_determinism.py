"""Determinism and multi-process correctness, through the CLI in subprocesses on CPU.

- The same config and seed, run twice, logs identical metrics and ends with bit-identical weights.
- `validate` of one checkpoint reports the same val/acc and val/loss with 1 process and with 2 DDP processes
  (gloo) on a validation set of odd size (41): the uneven shards neither drop nor repeat an example.
- A 2-process DDP fit trains each rank on its half of the data; one process tokenizes and writes the cache,
  not every rank.
"""

import re
from pathlib import Path

import pytest
import torch

from tests.cli_helpers import run_cli, scalars, tiny_run_args

DDP = ("--trainer.strategy", "ddp", "--trainer.devices", "2")


def run_dir_in(stdout: str, workdir: Path) -> Path:
    match = re.search(r"Run directory: (\S+)", stdout)
    assert match, stdout[-2000:]
    return workdir / match.group(1)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def learning_curves(run_dir: Path) -> dict[str, list[float]]:
    """Every logged value that depends on the computation (not throughput timings)."""
    return {tag: values for tag, values in scalars(run_dir).items() if tag.startswith(("train/", "val/", "lr-"))}


def printed_metrics(output: str) -> dict[str, float]:
    """The metrics table `validate` prints: `│ val/acc │ 0.24390244483947754 │`."""
    return {name: float(value) for name, value in re.findall(r"(val/\w+)\s*│\s*([-+.\deE]+)\s*│", output)}


@pytest.mark.slow
def test_same_config_and_seed_twice_gives_identical_runs(tiny_bert: Path, tiny_yelp: Path, tmp_path: Path) -> None:
    args = ["fit", *tiny_run_args(tiny_bert, tiny_yelp, "--trainer.max_epochs", "1")]
    # one workdir: the second run also reads the tokenized data from the cache the first one wrote
    first, second = (run_dir_in(run_cli(args, cwd=tmp_path).stdout, tmp_path) for _ in range(2))
    assert first != second
    curves = learning_curves(first)
    assert {"train/loss", "val/acc", "val/loss"} <= curves.keys()
    assert learning_curves(second) == curves
    expected, got = weights(first), weights(second)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)


@pytest.fixture(scope="module")
def ddp_fit(tiny_bert: Path, tiny_yelp: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 2-process DDP fit from an empty cache; returns its run directory and its stderr (progress bars)."""
    workdir = tmp_path_factory.mktemp("ddp")
    result = run_cli(["fit", *tiny_run_args(tiny_bert, tiny_yelp, "--trainer.max_epochs", "1", *DDP)], cwd=workdir)
    return run_dir_in(result.stdout, workdir), result.stderr


@pytest.mark.slow
def test_ddp_fit_trains_each_rank_on_its_half(ddp_fit: tuple[Path, str]) -> None:
    run_dir, _ = ddp_fit
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5  # 80 rows / (2 ranks x batch 8)
    assert "val/acc" in scalars(run_dir)


@pytest.mark.slow
def test_ddp_fit_tokenizes_once(ddp_fit: tuple[Path, str]) -> None:
    run_dir, stderr = ddp_fit
    # datasets draws one "Tokenizing <split>:   0%" bar per split it tokenizes, in whichever process does it
    assert sorted(re.findall(r"Tokenizing (\w+):\s+0%", stderr)) == ["test", "train", "validation"], stderr[-3000:]
    cache = run_dir.parents[2] / "hf_datasets_cache" / "review_classifier_tokenized"
    assert len([entry.name for entry in cache.iterdir()]) == 1  # one cache, no staging dir of a second writer


@pytest.mark.slow
def test_validate_with_one_and_two_processes_reports_the_same_metrics(ddp_fit: tuple[Path, str], tiny_bert: Path,
                                                                       tiny_yelp: Path) -> None:
    run_dir, _ = ddp_fit
    workdir = run_dir.parents[2]
    args = ["validate", *tiny_run_args(tiny_bert, tiny_yelp), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]
    single = printed_metrics(run_cli(args, cwd=workdir).stdout)
    double = printed_metrics(run_cli([*args, *DDP], cwd=workdir).stdout)
    assert {"val/acc", "val/loss", "val/f1_macro"} <= single.keys()
    assert double.keys() == single.keys()
    assert double["val/acc"] == single["val/acc"] and double["val/f1_macro"] == single["val/f1_macro"]
    assert round(single["val/acc"] * 41) == pytest.approx(single["val/acc"] * 41, abs=1e-4)  # a count out of 41
    # Not bit for bit: each rank batches its own shard, so padded lengths differ, and CPU kernels round the logits
    # differently (~1e-9) for other shapes. One example dropped or counted twice would move the mean by ~2%.
    assert double["val/loss"] == pytest.approx(single["val/loss"], rel=1e-6, abs=0)
