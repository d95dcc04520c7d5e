"""Receptive fields of dense outputs: the overlap-tile plan (``Tiling``) and how an effective field was
measured (``EffectiveProtocol``), with the request options that ask for them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.display import rich_result
from nnprobe.vision.images import ImageLike, image_message

#: ``erf_weights`` values and their codes.
ERF_WEIGHTS = {
    None: pb.EFFECTIVE_WEIGHTS_UNSPECIFIED,
    "random": pb.EFFECTIVE_WEIGHTS_RANDOM,
    "trained": pb.EFFECTIVE_WEIGHTS_TRAINED,
}


@rich_result()
@dataclass
class Tiling:
    """The overlap-tile plan of the end point's map, in input pixels, (height, width) pairs.

    Tile k along an axis keeps the map's units over pixels ``k * tile .. (k + 1) * tile - 1`` and runs on
    the window ``k * tile - halo_before .. (k + 1) * tile - 1 + halo_after``, clipped to the image; windows
    start at multiples of ``alignment``. ``halo``: (top, bottom, left, right). ``max_abs_diff``: the largest
    |tiled - whole| over the map when ``proved`` (0 up to float rounding), in ``dtype``.
    """

    layer: str
    tile: tuple[int, int]
    halo: tuple[int, int, int, int]
    stride: tuple[int, int]
    overlap: tuple[int, int]
    window: tuple[int, int]
    alignment: tuple[int, int]
    tiles: tuple[int, int]
    proved: bool
    max_abs_diff: float
    weights: str
    dtype: str


@rich_result()
@dataclass
class EffectiveProtocol:
    """How an effective field was measured: ``inputs`` (``normal(0, 1)`` or ``images``), their number and
    seed, the input ``resolution``, the ``weights`` (``random`` or ``trained``) and their seed, the
    computation's ``dtype`` and the repository version whose weights ran (0: none)."""

    num_samples: int
    seed: int
    inputs: str
    resolution: tuple[int, int]
    weights: str
    weight_seed: int
    dtype: str
    model_version: int


def tiling_options(tile: int | Sequence[int], prove: bool) -> pb.TilingOptions:
    """``TilingOptions`` for tiles of ``tile`` pixels (an int or (height, width))."""
    if isinstance(tile, (int, np.integer)):
        height = width = int(tile)
    else:
        values = [int(v) for v in tile]
        if len(values) != 2:
            raise ValueError(f"tiling must be an int or (height, width), not {tile!r}")
        height, width = values
    return pb.TilingOptions(tile_height=height, tile_width=width, prove=prove)


def add_effective_options(
    options: pb.EffectiveFieldOptions, weights: str | None, images: Iterable[ImageLike]
) -> pb.EffectiveFieldOptions:
    """``options`` with the weights (None: the model's default, ``random`` or ``trained``) and images."""
    if weights not in ERF_WEIGHTS:
        raise ValueError(f"erf_weights must be None, 'random' or 'trained', not {weights!r}")
    options.weights = ERF_WEIGHTS[weights]
    options.images.extend(image_message(image) for image in images)
    return options


def _pair(message: pb.Extent) -> tuple[int, int]:
    return int(message.height), int(message.width)


def tiling_result(message: pb.Tiling) -> Tiling:
    """The plan of a ``Tiling`` message."""
    halo = message.halo
    return Tiling(
        layer=message.layer,
        tile=_pair(message.tile),
        halo=(int(halo.top), int(halo.bottom), int(halo.left), int(halo.right)),
        stride=_pair(message.stride),
        overlap=_pair(message.overlap),
        window=_pair(message.window),
        alignment=_pair(message.alignment),
        tiles=_pair(message.tiles),
        proved=message.proved,
        max_abs_diff=message.max_abs_diff,
        weights=message.weights,
        dtype=message.dtype,
    )


def protocol_result(message: pb.EffectiveProtocol) -> EffectiveProtocol:
    """The protocol of an ``EffectiveProtocol`` message."""
    return EffectiveProtocol(
        num_samples=message.num_samples,
        seed=message.seed,
        inputs=message.inputs,
        resolution=_pair(message.resolution),
        weights=message.weights,
        weight_seed=message.weight_seed,
        dtype=message.dtype,
        model_version=message.model_version,
    )
