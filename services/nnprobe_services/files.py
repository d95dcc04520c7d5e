"""Durable file writes shared by the stores (corpora, checkpoints): write-then-rename so a reader sees
the old file or the new one, never a torn one, and clean-up of what a killed writer left behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, fsync, rename, fsync dir.

    Raises ``OSError`` (disk full, folder unwritable...); the file at ``path`` is then unchanged and no
    temporary file is left behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_partial_writes(folder: Path, older_than: float) -> list[Path]:
    """Delete the temporary files ``atomic_write`` leaves behind when its process is killed between
    creating and renaming one (``.<name>.<random>.tmp``), anywhere under ``folder``, when last modified
    before ``older_than`` (a Unix time: files that a live writer is still writing are newer). Returns
    the files removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.rglob(".*.tmp"):
        try:
            if path.is_file() and path.stat().st_mtime < older_than:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue
    return removed


__all__ = ["atomic_write", "remove_partial_writes"]
