"""Every `python -m src.cli` command in the README parses: its configs exist, stack and type-check."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from src.cli import main
from tests.cli_helpers import REPO


def readme_cli_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    commands = []
    for line in text.splitlines():
        line = line.strip().lstrip("$ ")
        if line.startswith("python -m src.cli "):
            commands.append(line.split(" #")[0].strip())
    return commands


def test_readme_shows_the_main_commands() -> None:
    commands = " ".join(readme_cli_commands())
    for expected in ("configs/quickstart.yaml", "configs/yelp_bert.yaml", "configs/hardware/ddp.yaml",
                     "configs/hardware/bf16.yaml", "configs/hardware/gpu.yaml", "configs/hardware/cpu.yaml"):
        assert expected in commands


@pytest.mark.parametrize("command", readme_cli_commands())
def test_readme_command_parses(command: str, capsys: pytest.CaptureFixture[str], monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)
    args = [arg for arg in shlex.split(command)[3:] if arg != "\\"]
    args = [str(tmp_path / "x.ckpt") if arg.endswith(".ckpt") else arg for arg in args]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (None, 0), capsys.readouterr().err
    assert "trainer:" in capsys.readouterr().out


def section_commands(heading: str) -> list[str]:
    """The `python -m src...` lines of one README section's code blocks, in order."""
    section = (REPO / "README.md").read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip().startswith("python -m src.")]


@pytest.mark.slow
def test_readme_workflow_runs_in_order(tmp_path: Path, tiny_bert: Path, tiny_yelp: Path) -> None:
    """The quickstart, then the README's test -> predict -> export -> resume commands, run as written in a fresh
    directory (the tiny model and data swapped in); eval and export commands leave the run's files as they were.
    The first command and the export start a real interpreter, the other `src.cli` ones fork (tests/cli_helpers)."""
    from tests.cli_helpers import run_cli, scalars
    from tests.test_faults import snapshot

    for name in ("configs", "data"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "my_reviews.txt").write_text("the food was superb\nawful service\n\n")
    tiny = ["--model.model_name_or_path", str(tiny_bert), "--data.dataset", str(tiny_yelp),
            "--data.max_length", "64", "--trainer.enable_progress_bar", "false"]
    commands = section_commands("Quick start (offline, CPU, about 2 minutes)") + section_commands("Commands")
    assert commands[0] == "python -m src.cli fit --config configs/quickstart.yaml" and len(commands) >= 8
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets_cache")}
    run = tmp_path / "logs/quickstart/version_0"
    for number, command in enumerate(commands):
        args = shlex.split(command)
        if args[2] == "src.cli" and "--print_config" not in args:
            args += tiny
        if args[2] == "src.cli" and number:
            result = run_cli(args[3:], cwd=tmp_path, check=False)
        else:
            result = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env=env, capture_output=True,
                                    text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        if args[3] == "fit":
            before, curves = snapshot(run), scalars(run)
        else:
            assert (snapshot(run), scalars(run)) == (before, curves), command
    assert len(list(run.glob("eval/predict_*/predictions.jsonl"))) == 2
    assert (tmp_path / "exports/quickstart/model.safetensors").is_file()
