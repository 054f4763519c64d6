"""`AtomicCheckpointIO`: checkpoint files hold the old or the new state, never part of one, whatever stops the process.

Lightning's `TorchCheckpointIO` writes through an fsspec transaction, which stages the file in $TMPDIR and then
moves it over the target. When $TMPDIR is on another filesystem than the run directory (node-local /tmp or tmpfs
vs. shared storage on a cluster, a container's /tmp vs. a mounted volume), that move is a copy into the existing
last.ckpt: a kill or a full disk during the copy leaves it truncated, and the run cannot be resumed.
"""

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from src.utils.atomic import atomic_write
from src.utils.errors import UserInputError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a local checkpoint to a temporary file beside it, sync it to disk, then rename it over the old one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote storage / Lightning's own errors
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialization errors surface before anything on disk changes
        with atomic_write(Path(path)) as temp:
            temp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (`weights_only`: nothing in it gets to run code); a damaged file is a user error."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserInputError(f"could not read checkpoint '{path}' ({reason}): it is damaged or not a checkpoint; "
                             "use another one, e.g. the run's other checkpoint in the same checkpoints/ dir") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserInputError(f"'{path}' is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def check_checkpoint_fits(module: torch.nn.Module, checkpoint: dict[str, Any], hparam_keys: tuple[str, ...]) -> None:
    """Refuse, in one line, a checkpoint whose weights do not fit `module` (names or shapes differ), naming the
    hyperparameters among `hparam_keys` that differ from the run's."""
    own, saved = module.state_dict(), checkpoint.get("state_dict", {})
    misfits = sorted(key for key in own.keys() | saved.keys()
                     if key not in own or key not in saved or own[key].shape != saved[key].shape)
    if not misfits:
        return
    trained, current = checkpoint.get("hyper_parameters", {}), module.hparams
    differences = [f"{key}={trained[key]!r} (this run: {current.get(key)!r})"
                   for key in hparam_keys if key in trained and key in current and trained[key] != current[key]]
    what = ", ".join(differences) or f"weights of other shapes ({len(misfits)} tensors, e.g. {misfits[0]})"
    raise UserInputError(
        f"the checkpoint was trained with {what}: it does not fit this model. Use the checkpoint's settings "
        "(config.yaml in its run directory), or drop --ckpt_path to start a new run"
    )
