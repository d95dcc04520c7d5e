"""Request images to arrays, in one place (no gRPC): the images a model classifies or attacks, and the
picture a receptive-field plot is drawn on. Every failure names the request field at fault.

An image arrives either as encoded bytes (JPEG, PNG, WebP, BMP, TIFF, GIF) or as a raw (H, W, C) pixel array
that the servicer has already decoded from its ``Tensor`` message; ``ImageInput`` holds one of the two.
Decoding, conversion, resize and crop live in ``preprocess``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nnprobe_services.errors import InvalidArgument, ResourceExhausted
from nnprobe_services.vision.images import preprocess
from nnprobe_services.vision.images.preprocess import Preprocessing


@dataclass(frozen=True)
class ImageInput:
    """One request image: ``encoded`` bytes, or ``pixels`` (H, W, C) uint8 or float in [0, 1] when no bytes
    were given. ``field`` is the request field it came from (``images[2].encoded``); ``name`` the client's
    label for it (may be empty)."""

    encoded: bytes
    pixels: np.ndarray | None
    field: str
    name: str = ""


#: Most encoded bytes and most pixels (width * height) one image, or one resize of it, may have.
ImageLimits = preprocess.ImageLimits


def count_images(count: int, field: str, maximum: int) -> None:
    """Check that a request holds between 1 and ``maximum`` images (``InvalidArgument``/``ResourceExhausted``
    on ``field``)."""
    if count == 0:
        raise InvalidArgument("give at least one image", field=field)
    if count > maximum:
        raise ResourceExhausted(f"holds {count} images; the limit is {maximum}", field=field)


def model_inputs(
    images: Sequence[ImageInput], prep: Preprocessing, limits: ImageLimits, *, skip_resize: bool
) -> torch.Tensor:
    """Decode and preprocess every image to a float32 (N, 3, H, W) tensor in [0, 1] (H x W: ``prep.crop``).

    Raises ``InvalidArgument`` (unreadable, wrong format or size) or ``ResourceExhausted`` (over ``limits``)
    on the image's field, the message starting "image <i> (<name>)".
    """
    batch = []
    for i, image in enumerate(images):
        label = f"image {i}" + (f" ({image.name})" if image.name else "")
        source = image.encoded if image.encoded or image.pixels is None else image.pixels
        batch.append(
            preprocess.prepare(
                source, prep, field=image.field, limits=limits, label=label, skip_resize=skip_resize
            )
        )
    return torch.stack(batch)


def plot_picture(image: ImageInput, max_pixels: int, max_bytes: int = 32 * 1024 * 1024) -> np.ndarray:
    """The picture a receptive-field plot is drawn on: (H, W, 3) uint8 from encoded bytes, or the given
    (H, W, C) pixels with C in 1, 3, 4 of uint8 or float. Encoded bytes may announce at most ``max_pixels``
    pixels (width * height).

    Raises ``InvalidArgument`` on ``image.field`` when it cannot be used, ``ResourceExhausted`` on
    ``plot.image.encoded`` when the header announces too many pixels.
    """
    if image.encoded:  # decoded as for classification, every pixel (no draft, no resize)
        limits = ImageLimits(max_bytes, max_pixels)
        return preprocess.decode_array(image.encoded, field=image.field, limits=limits)
    pixels = image.pixels
    if pixels is None:
        raise InvalidArgument("give `encoded` bytes or `pixels`", field=image.field)
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4) or pixels.dtype.kind not in "uf":
        raise InvalidArgument(
            f"must be (H, W, C) with C in 1, 3, 4 of uint8 or float, got {list(pixels.shape)} {pixels.dtype}",
            field=image.field,
        )
    return pixels
