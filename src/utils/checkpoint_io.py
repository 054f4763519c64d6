"""Checkpoints for resuming: a last.ckpt that is always the newest state, written so that it is never half a file.

`AtomicCheckpointIO`: checkpoint files hold the old or the new state, never part of one, whatever stops the process.

Lightning's `TorchCheckpointIO` writes through an fsspec transaction, which stages the file in $TMPDIR and then
moves it over the target. When $TMPDIR is on another filesystem than the run directory (node-local /tmp or tmpfs
vs. shared storage on a cluster, a container's /tmp vs. a mounted volume), that move is a copy into the existing
last.ckpt: a kill or a full disk during the copy leaves it truncated, and the run cannot be resumed.
"""

import glob
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a local checkpoint to a temporary file beside it, sync it to disk, then rename it over the old one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote storage / Lightning's own errors
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialization errors surface before anything on disk changes
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a save that was killed
            stale.unlink(missing_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            umask = os.umask(0o022)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint gets the usual permissions
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power loss
        finally:
            os.close(directory)
