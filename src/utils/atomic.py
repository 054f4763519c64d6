"""Atomic writes: a file or directory holds the old or the new content, never part of one, whatever stops the
process (kill, full disk, power loss). One helper for checkpoints, the tokenized cache, exports and prediction files.

Write into the temporary path beside the target; on success it is synced to disk and renamed onto the target.
Staging beside the target (not in $TMPDIR) keeps the rename on one filesystem, where it is atomic.
"""

import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | os.PathLike, *, directory: bool = False, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file (or directory) beside `path`; publish it at `path` when the block succeeds.

    `overwrite=False` raises `FileExistsError` rather than replace an existing `path` (and removes the staged copy).
    A failure inside the block removes the staged copy and leaves `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):  # left behind by a writer that was killed
        _remove(stale)
    if directory:
        temp = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".tmp"))
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        os.close(fd)
        temp = Path(name)
    try:
        yield temp
        _sync(temp)
        _default_permissions(temp)
        _publish(temp, path, overwrite)
    finally:
        _remove(temp)
    _fsync_dir(path.parent)  # the rename itself survives a power loss


def _publish(temp: Path, path: Path, overwrite: bool) -> None:
    if temp.is_dir():
        if path.exists() and not overwrite:
            raise FileExistsError(path)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old.tmp")
            os.replace(path, old)
        try:
            os.rename(temp, path)
        except OSError:
            if old is not None:
                os.replace(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    elif overwrite:
        os.replace(temp, path)
    else:
        os.link(temp, path)  # atomic, and fails if the name is taken


def _sync(temp: Path) -> None:
    files = [temp] if temp.is_file() else [p for p in temp.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb+") as handle:
            os.fsync(handle.fileno())
    if temp.is_dir():
        _fsync_dir(temp)


def _default_permissions(temp: Path) -> None:
    """The modes a plain `open`/`mkdir` would give: mkstemp/mkdtemp (and safetensors) make files private."""
    umask = _umask()
    for path in [temp, *(temp.rglob("*") if temp.is_dir() else [])]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
