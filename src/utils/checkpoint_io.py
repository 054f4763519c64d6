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
