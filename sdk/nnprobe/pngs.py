"""PNG encoding without an imaging library (zlib and struct), for pictures the SDK draws from arrays."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(pixels: np.ndarray) -> bytes:
    """``pixels`` (H, W) gray or (H, W, 3) RGB, uint8, as the bytes of an 8-bit PNG file.

    Raises ``ValueError`` for another shape or dtype.
    """
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"pixels must be uint8 (H, W) or (H, W, 3), not {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def signed_picture(values: np.ndarray) -> np.ndarray:
    """A signed (H, W[, 3]) array as uint8 pixels: 0 is mid-gray, ±max|values| are 255 and 0."""
    scale = float(np.max(np.abs(values))) if values.size else 0.0
    centred = 0.5 + 0.5 * values / scale if scale > 0 else np.full(values.shape, 0.5)
    return np.clip(np.rint(centred * 255.0), 0, 255).astype(np.uint8)
