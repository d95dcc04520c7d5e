"""Overlap-tile plans for dense outputs: how to predict a map tile by tile so that every unit equals the
whole-image prediction (the overlap-tile strategy of U-Net, Ronneberger et al., MICCAI 2015).

The image is cut into tiles of ``tile`` pixels along each axis; tile k keeps the end point's units over its
own pixels (units ``k * tile / jump`` onwards) and runs on a window that adds a halo of context on each side,
clipped to the image (where the network pads exactly as it does on the whole image). The halo comes from the
exact connected pixels of the end point's units (``boxes.connected_pixels``): how far a unit's pixels reach
before and after the pixels the unit owns (``[u * jump, (u + 1) * jump)``), the largest over the units at
both borders and over one period of interior units (interior units repeat with the alignment's period).
Windows must start where every stride and pooling grid of the network lines up with the whole image's: at
multiples of the least common multiple of the jumps on the way to the end point (``alignment``), so tiles
and halos are multiples of it. The padding caveat: a tile's own zero padding at a window edge inside the
image is not image content; the halo keeps every kept unit away from it, and the halo's outputs are cropped.

``plan`` computes the plan; ``prove`` runs a network tiled and whole on one random input and returns the
largest difference over the map (0 up to float rounding when the plan is right). Errors: ``InvalidArgument``
on ``tiling.tile_height``/``tiling.tile_width`` (not a positive multiple of the alignment),
``FailedPrecondition`` on ``tiling`` (global context: no finite halo exists), ``ResourceExhausted`` on
``tiling.tile_height`` (too many tiles to prove).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

import torch

from nnprobe_services.errors import Cancelled, FailedPrecondition, InvalidArgument, ResourceExhausted
from nnprobe_services.vision.receptive_fields import boxes
from nnprobe_services.vision.receptive_fields.arithmetic import LayerField, Unsupported

#: Most tiles one proof runs (each tile is one forward pass of the network).
MAX_PROOF_TILES = 256
#: Most units per axis whose connected pixels are traced for one plan (borders and one interior period).
MAX_TRACED_UNITS = 96

#: Runs the network on an input of the given (height, width) and returns the end point's map (N, C, h, w).
Runner = Callable[[tuple[int, int]], Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class TilingPlan:
    """The overlap-tile plan of ``layer``'s map. Pixel counts are input pixels; ``halo`` is (top, bottom,
    left, right); ``tiles`` (rows, columns) cover the map. ``proved``/``max_abs_diff``/``weights``/``dtype``
    describe the proof when one ran."""

    layer: str
    tile: tuple[int, int]
    halo: tuple[int, int, int, int]
    alignment: tuple[int, int]
    tiles: tuple[int, int]
    units_per_tile: tuple[int, int]
    output_size: tuple[int, int]
    #: The end point's jump per axis (input pixels between neighbouring units).
    jump: tuple[Fraction, Fraction] = (Fraction(1), Fraction(1))
    proved: bool = False
    max_abs_diff: float = 0.0
    weights: str = ""
    dtype: str = ""

    @property
    def stride(self) -> tuple[int, int]:
        """Distance between the starts of neighbouring windows: the tile."""
        return self.tile

    @property
    def overlap(self) -> tuple[int, int]:
        """Pixels neighbouring windows share: halo before + halo after."""
        top, bottom, left, right = self.halo
        return top + bottom, left + right

    @property
    def window(self) -> tuple[int, int]:
        """The input window of an interior tile: tile + overlap."""
        return self.tile[0] + self.overlap[0], self.tile[1] + self.overlap[1]

    def windows(self, input_size: tuple[int, int]) -> list[tuple[slice, slice, slice, slice]]:
        """Per tile, row by row: (input rows, input columns, kept output rows, kept output columns)."""
        result = []
        axes = [self._axis(a, input_size[a]) for a in (0, 1)]
        for rows, kept_rows in axes[0]:
            for columns, kept_columns in axes[1]:
                result.append((rows, columns, kept_rows, kept_columns))
        return result

    def _axis(self, axis: int, size: int) -> list[tuple[slice, slice]]:
        tile, per_tile, units = self.tile[axis], self.units_per_tile[axis], self.output_size[axis]
        before, after = self.halo[2 * axis], self.halo[2 * axis + 1]
        return [
            (
                slice(max(k * tile - before, 0), min((k + 1) * tile + after, size)),
                slice(k * per_tile, min((k + 1) * per_tile, units)),
            )
            for k in range(self.tiles[axis])
        ]


def alignment(fields: Sequence[LayerField]) -> tuple[int, int]:
    """The least common multiple of the (numerators of the) jumps of ``fields``, per axis (height, width)."""
    return (
        math.lcm(*(Fraction(f.height.jump).numerator for f in fields)),
        math.lcm(*(Fraction(f.width.jump).numerator for f in fields)),
    )


def plan(
    fields: Sequence[LayerField],
    end: str,
    input_size: tuple[int, int],
    tile: tuple[int, int],
    *,
    global_context: str = "",
) -> TilingPlan:
    """The overlap-tile plan of layer ``end``'s map (see the module docstring); ``fields``: ``end`` and the
    layers on its local paths, the input first. Raises ``InvalidArgument``/``FailedPrecondition``."""
    if global_context:
        raise FailedPrecondition(
            f"the units of {end!r} see the whole input after {global_context!r} (global context), so no "
            f"finite halo makes tiles exact; choose an end_point before it",
            field="tiling",
        )
    layer = next(f for f in fields if f.name == end)
    align = alignment(fields)
    per_tile, reach, tiles = [], [], []
    for axis, (name, size, step) in enumerate(zip(("height", "width"), tile, align, strict=True)):
        field = f"tiling.tile_{name}"
        if size <= 0:
            raise InvalidArgument(f"must be >= 1, got {size}", field=field)
        if size % step:
            raise InvalidArgument(
                f"must be a multiple of {step}, the alignment of {end!r} (the least common multiple of the "
                f"jumps on its way: tile windows start on every stride's grid), got {size}",
                field=field,
            )
        jump = Fraction((layer.height, layer.width)[axis].jump)
        units = (layer.height, layer.width)[axis].size
        count = Fraction(size) / jump
        if count.denominator != 1:  # the alignment is a multiple of every integer jump
            raise InvalidArgument(f"must hold a whole number of units of {end!r} (jump {jump})", field=field)
        per_tile.append(int(count))
        tiles.append(-(-units // int(count)))
        period = int(Fraction(step) / jump) or 1
        before, after = _reach(fields, layer, axis, input_size, period, (int(count), tiles[-1]))
        reach += [_round_up(before, step), _round_up(after, step)]
    return TilingPlan(
        end,
        (int(tile[0]), int(tile[1])),
        (reach[0], reach[1], reach[2], reach[3]),
        align,
        (tiles[0], tiles[1]),
        (per_tile[0], per_tile[1]),
        (layer.height.size, layer.width.size),
        (Fraction(layer.height.jump), Fraction(layer.width.jump)),
    )


def _round_up(value: int, step: int) -> int:
    return max(-(-value // step) * step, 0)


def _reach(
    fields: Sequence[LayerField],
    layer: LayerField,
    axis: int,
    input_size: tuple[int, int],
    period: int,
    tiling: tuple[int, int],
) -> tuple[int, int]:
    """The most input pixels a unit's connected pixels reach before and after its own pixels along
    ``axis``, over the units at both borders and one interior period (the other coordinate: the centre).
    ``tiling``: (units per tile, tiles). The first tile's window starts at the image's first pixel, so its
    units' reach before needs no halo; so does the last tile's reach after when its tile reaches the end."""
    along = (layer.height, layer.width)[axis]
    n, jump = along.size, Fraction(along.jump)
    span = min(period, MAX_TRACED_UNITS // 3)
    centre = n // 2
    traced = sorted(
        {u for u in [*range(span), *range(centre, centre + span), *range(n - span, n)] if 0 <= u < n}
    )
    other = (layer.width.size // 2, layer.height.size // 2)[axis]
    before = after = 0
    for unit in traced:
        x, y = (other, unit) if axis == 0 else (unit, other)
        ranges = boxes.connected_pixels(fields, layer.name, x, y)
        first, last = ranges[axis]
        if first > last:  # a unit that reads only padding
            continue
        own_first = math.floor(unit * jump)
        own_last = min(math.ceil((unit + 1) * jump) - 1, input_size[axis] - 1)
        if unit >= tiling[0]:
            before = max(before, own_first - first)
        last_tile = unit >= (tiling[1] - 1) * tiling[0]
        if not last_tile or math.ceil(tiling[1] * tiling[0] * jump) < input_size[axis]:
            after = max(after, last - own_last)
    return before, after


def prove(
    tiling: TilingPlan,
    run: Runner,
    channels: int,
    input_size: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    should_stop: Callable[[], bool],
) -> TilingPlan:
    """Run the network whole and tile by tile on one N(0, 1) input (drawn from ``seed``) and return
    ``tiling`` with the largest |tiled - whole| over the map. Raises ``ResourceExhausted`` (too many
    tiles), ``Cancelled`` (``should_stop``), ``Unsupported`` (a window's map does not hold its units)."""
    count = tiling.tiles[0] * tiling.tiles[1]
    if count > MAX_PROOF_TILES:
        raise ResourceExhausted(
            f"the proof would run {count} tiles; it runs at most {MAX_PROOF_TILES}: give a larger tile",
            field="tiling.tile_height",
        )
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, *input_size, generator=generator, dtype=torch.float64).to(device, dtype)
    with torch.no_grad():
        whole = run(input_size)(x)
        stitched = torch.full_like(whole, math.nan)
        for index, (rows, columns, kept_rows, kept_columns) in enumerate(tiling.windows(input_size)):
            if should_stop():
                raise Cancelled(f"stopped after {index} of {count} tiles")
            out = run((rows.stop - rows.start, columns.stop - columns.start))(x[..., rows, columns])
            shift = [int(s.start / j) for s, j in zip((rows, columns), tiling.jump, strict=True)]
            local_rows = slice(kept_rows.start - shift[0], kept_rows.stop - shift[0])
            local_columns = slice(kept_columns.start - shift[1], kept_columns.stop - shift[1])
            piece = out[..., local_rows, local_columns]
            if piece.shape[-2:] != stitched[..., kept_rows, kept_columns].shape[-2:]:
                raise Unsupported(
                    f"the window at rows {rows.start}..{rows.stop - 1}, columns {columns.start}.."
                    f"{columns.stop - 1} gives a map of {tuple(out.shape[-2:])} units, which does not hold "
                    f"its tile's units",
                    field="tiling",
                )
            stitched[..., kept_rows, kept_columns] = piece
    difference = float((stitched - whole).abs().max())
    return replace(tiling, proved=True, max_abs_diff=difference, dtype=str(dtype).removeprefix("torch."))
