import os

# before anything imports huggingface_hub, which reads these once: never wait on an unreachable hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# under `pytest -n auto` (the README's test command) each worker, and every CLI it starts, uses one torch thread:
# N workers with a thread per core each put N x N threads on N cores (measured on 2 cores: 17.5 CPU-minutes for
# the suite instead of 14.3)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path

import pytest

from tests.fixtures import write_tiny_bert, write_tiny_yelp


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_yelp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_yelp(tmp_path_factory.mktemp("tiny_yelp"))


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own datasets cache, so cache reuse and errors are tested from a clean state."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")


def pytest_configure(config: pytest.Config) -> None:
    """Under `-n auto`, hand each worker a test or two at a time: xdist's default first sends every worker a long
    run of consecutive tests, which put all the slow ones (collected first, below) on one worker."""
    if getattr(config.option, "maxschedchunk", 0) is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first, so the short ones fill in around them and the workers finish together."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
