"""Images as ``Image`` messages: file paths, encoded bytes, PIL images and numpy arrays."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnprobe import tensors
from nnprobe.api.common.v1 import common_pb2

#: What ``classify`` accepts as one image: a file path, encoded bytes, a PIL image or an (H, W[, C]) array
#: (uint8 in [0, 255] or float in [0, 1]).
ImageLike = Any


def _is_pil(image: Any) -> bool:
    return hasattr(image, "save") and hasattr(image, "mode")


def image_message(image: ImageLike, name: str = "") -> common_pb2.Image:
    """One image as an ``Image`` message (PIL images are sent as PNG; PIL itself is optional).

    Arrays travel raw as ``pixels`` ((H, W) gains a channel axis); paths and bytes travel encoded.
    Raises ``TypeError`` for anything else.
    """
    if isinstance(image, common_pb2.Image):
        return image
    if isinstance(image, np.ndarray):
        pixels = image[:, :, None] if image.ndim == 2 else image
        return common_pb2.Image(pixels=tensors.to_tensor(np.ascontiguousarray(pixels)), name=name)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return common_pb2.Image(encoded=bytes(image), name=name)
    if isinstance(image, (str, Path)):
        path = Path(image)
        return common_pb2.Image(encoded=path.read_bytes(), name=name or path.name)
    if _is_pil(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return common_pb2.Image(encoded=buffer.getvalue(), name=name)
    raise TypeError(f"an image is a path, bytes, a PIL image or a numpy array, not {type(image).__name__}")


def image_messages(
    images: ImageLike | Iterable[ImageLike], names: Sequence[str] | None = None
) -> list[common_pb2.Image]:
    """One image or an iterable of them as messages, each named from ``names`` when given.

    Raises ``ValueError`` when ``names`` and the images differ in number.
    """
    single = isinstance(images, (str, Path, bytes, bytearray, memoryview, np.ndarray, common_pb2.Image))
    if single or _is_pil(images):
        messages = [image_message(images)]
    else:
        messages = [image_message(image) for image in images]
    if names is not None:
        if len(names) != len(messages):
            raise ValueError(f"got {len(names)} names for {len(messages)} images")
        for message, name in zip(messages, names, strict=True):
            message.name = name
    return messages
