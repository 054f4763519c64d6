"""configs/recipes/ stack on every experiment config, set what they say, and every recipe command documented in the
README (or its pending Recipes section) parses."""

import shlex
from pathlib import Path

import pytest
import yaml

from src import cli, pretrain
from tests.cli_helpers import REPO

EXPERIMENTS = sorted(p.name for p in (REPO / "configs").glob("*.yaml") if p.name not in ("defaults.yaml",
                                                                                           "pretrain_defaults.yaml",
                                                                                           "debug.yaml"))
FINE_TUNING = {  # recipe -> (key, value) it must leave in the merged config
    "head_tail.yaml": [("data.truncation", "head_tail"), ("data.head_tokens", 128)],
    "llrd.yaml": [("model.layer_lr_decay", 0.95)],
    "lora.yaml": [("model.peft", "lora"), ("model.lora_r", 8), ("model.lora_alpha", 16),
                  ("model.optimizer.init_args.lr", 5e-4)],
}


def merged_config(main: object, args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code in (None, 0), out.err
    return yaml.safe_load(out.out)


def lookup(config: dict, key: str) -> object:
    for part in key.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_recipes_stack_on_every_experiment(experiment: str, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    args = ["fit", "--config", f"configs/{experiment}"]
    for recipe in FINE_TUNING:
        args += ["--config", f"configs/recipes/{recipe}"]
    config = merged_config(cli.main, args, capsys)
    for recipe, expected in FINE_TUNING.items():
        for key, value in expected:
            assert lookup(config, key) == value, (recipe, key)
    experiment_config = yaml.safe_load((REPO / "configs" / experiment).read_text())
    assert config["data"]["dataset"] == experiment_config["data"]["dataset"]  # the experiment's data is kept

    tapt = merged_config(pretrain.main, ["fit", "--config", f"configs/{experiment}", "--config",
                                         "configs/recipes/tapt.yaml"], capsys)
    assert tapt["trainer"]["logger"]["init_args"]["name"] == "tapt" and tapt["test_after_fit"] is False
    assert tapt["data"]["mlm_probability"] == 0.15 and tapt["checkpoint"]["monitor"] == "val/loss"
    assert tapt["model"]["model_name_or_path"] == experiment_config["model"]["model_name_or_path"]


def documented_commands() -> list[str]:
    """`python -m src.cli` / `src.pretrain` commands of the README's Recipes section (or the section file waiting
    to be pasted into it)."""
    texts = [(REPO / "README.md").read_text()]
    if (REPO / "RECIPES_README_SECTION.md").exists():
        texts.append((REPO / "RECIPES_README_SECTION.md").read_text())
    commands = []
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if line.startswith(("python -m src.pretrain ", "python -m src.cli ")) and "recipes/" in line:
                commands.append(line.split(" #")[0].strip())
    return sorted(set(commands))


def test_the_readme_documents_every_recipe() -> None:
    documented = " ".join(documented_commands())
    for recipe in (*FINE_TUNING, "tapt.yaml"):
        assert f"configs/recipes/{recipe}" in documented


@pytest.mark.parametrize("command", documented_commands())
def test_documented_recipe_command_parses(command: str, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)
    words = shlex.split(command)
    main = pretrain.main if words[2] == "src.pretrain" else cli.main
    args = [str(tmp_path / "x.ckpt") if arg.endswith(".ckpt") else arg for arg in words[3:]]
    assert "trainer" in merged_config(main, args, capsys)
