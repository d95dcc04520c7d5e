"""Checkpoints: ``torch.save`` bytes written atomically (temp file, fsync, rename) with a sha256 header.
A job keeps two: the last one (``checkpoint.pt``) and the best-validation one (``best.pt``, beside it).

File layout: ``NNPROBE-CKPT1 <sha256 hex>\\n`` followed by the ``torch.save`` payload. A file whose payload
does not match its checksum is refused (a torn or tampered file never loads).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.files import atomic_write

MAGIC = b"NNPROBE-CKPT1 "


class WriteFailed(OSError):
    """A checkpoint could not be written (disk full, folder unwritable...); the previous file is intact."""


def save(path: Path, payload: dict[str, Any]) -> str:
    """Write ``payload`` to ``path`` atomically; return the payload's sha256.

    Raises ``WriteFailed`` naming the file and the cause when the write fails; the file at ``path`` is then
    the previous checkpoint (or absent), and no temporary file is left behind.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    try:
        atomic_write(path, MAGIC + digest.encode() + b"\n" + data)
    except OSError as error:
        reason = error.strerror or str(error)
        raise WriteFailed(error.errno, f"could not write checkpoint {path}: {reason}") from error
    return digest


def best_path(path: Path) -> Path:
    """Where the best-validation checkpoint lives beside the last checkpoint at ``path``."""
    return path.with_name("best.pt")


def save_last_and_best(path: Path, payload: dict[str, Any]) -> str:
    """Write a training checkpoint to ``path`` (``save``); when its model is the best-validation one so far
    (``payload["best"]["step"]`` is its step), write it to ``best_path(path)`` first, so the last
    checkpoint never names a best that is not on disk. Returns the last checkpoint's sha256; raises
    ``WriteFailed`` as ``save``."""
    best = payload.get("best") or {}
    if best.get("step", -1) == payload["step"]:
        save(best_path(path), payload)
    return save(path, payload)


def load(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint after verifying its checksum; FailedPrecondition when missing or corrupted."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FailedPrecondition(f"checkpoint {path} is missing") from None
    header, _, data = raw.partition(b"\n")
    if not header.startswith(MAGIC):
        raise FailedPrecondition(f"checkpoint {path} is not an nnprobe checkpoint")
    expected = header[len(MAGIC) :].decode()
    if hashlib.sha256(data).hexdigest() != expected:
        raise FailedPrecondition(f"checkpoint {path} is corrupted (sha256 mismatch)")
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
