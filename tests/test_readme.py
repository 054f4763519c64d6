"""Every `python -m src.cli` command in the README parses: its configs exist, stack and type-check."""

import shlex
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
