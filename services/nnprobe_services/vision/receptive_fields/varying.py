"""Fields that differ from unit to unit along one axis: the exact box of every unit, where one linear form
(centre start + o * jump, size r) does not describe them all.

A layer that reads its input through a tap table (``Window.taps``: resizing in every mode, a transposed
convolution, depth-to-space) gives each output unit o the hull of the boxes of the input positions it reads
with a non-zero weight. Those boxes can differ by position: the even and odd outputs of a transposed
convolution with stride 2 read different windows (their *phase*), a bilinear resize by 3/2 reads one or two
inputs depending on where its sample falls. The boxes are kept exactly (``Axis.edges``) through every later
layer until a layer makes them uniform again (a stride that lands every unit on the same phase).

**Unclipped box.** A position outside a map (a convolution's padding, the border taps of a transposed
convolution) is a *virtual* unit whose box continues that map's linear form: centre start + q * jump, size
r. A unit's unclipped box is the hull of the boxes of the real and virtual positions its taps reach, so for
a network without tap tables it is the textbook box (padding included), and in general it is the exact
hull of the image pixels connected to the unit plus the padding its windows reach.

The linear form quoted for a varying layer is the smallest one that holds every unit's exact box: with
j_out = j / ratio, a(o) = low(o) - o * j_out, b(o) = high(o) - o * j_out, the size is max b - min a and the
start (max b + min a) / 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from nnprobe_services.vision.receptive_fields.arithmetic import (
    Axis,
    Edges,
    InvalidSpec,
    Unsupported,
    Window,
    whole,
)


def transposed_taps(n_in: int, n_out: int, window: Window) -> tuple[tuple[int, ...], ...]:
    """The input positions each output unit of a transposed convolution reads, along one axis: output o
    reads input i when o = i * stride - pad_before + dilation * t for a tap t in 0..kernel - 1 (positions
    outside 0..n_in - 1 are padding, virtual). Ascending; an output between strides may read none."""
    s, d, p = window.stride, window.dilation, window.pad_before
    table = []
    for o in range(n_out):
        reach = [o + p - d * t for t in range(window.kernel)]
        table.append(tuple(sorted(r // s for r in reach if r % s == 0)))
    return tuple(table)


def transposed_size(n_in: int, window: Window, output_padding: int) -> int:
    """Output length of a transposed convolution: (n - 1) s - pads + d (k - 1) + 1 + output_padding."""
    return (n_in - 1) * window.stride - window.pad_before - window.pad_after + window.extent + output_padding


def through_taps(axis: Axis, window: Window, where: str) -> Axis:
    """The field after a tap table (or nearest upsampling by ``window.upsample``)."""
    if window.taps is not None:
        table: Sequence[Sequence[int]] = window.taps
        ratio = window.ratio
    else:
        u = window.upsample
        table, ratio = [(o // u,) for o in range(axis.size * u)], Fraction(u)
    if not table:
        raise InvalidSpec(f"{where}: the output would have no units", field="input_size")
    edges = [_hull(axis, taps) for taps in table]
    return fitted(edges, Fraction(axis.jump) / ratio, where)


def through_window(axis: Axis, window: Window, linear: Axis) -> Axis:
    """The field after a sliding window (``linear``: its arithmetic) over a map whose units vary."""
    s, p, d, e = window.stride, window.pad_before, window.dilation, window.extent
    edges = [_hull(axis, range(o * s - p, o * s - p + e, d)) for o in range(linear.size)]
    return fitted(edges, Fraction(linear.jump), "")


def joined(axes: Sequence[Axis]) -> Axis:
    """Branches joined (equal size and jump): each unit's box is the hull of its boxes along the paths."""
    edges = [_hull_of(_box(a, o) for a in axes) for o in range(axes[0].size)]
    return fitted(edges, Fraction(axes[0].jump), "")


def fitted(edges: Sequence[Edges], jump: Fraction, where: str) -> Axis:
    """The smallest linear form of jump ``jump`` holding every box; ``edges`` kept unless all are the same
    box shifted by o * jump (then the linear form is exact)."""
    shifted = [(e[0] - o * jump, e[1] - o * jump) for o, e in enumerate(edges) if e is not None]
    if not shifted:
        raise Unsupported(f"{where}: no input pixel reaches any of its units", field="model.name")
    low, high = min(a for a, _ in shifted), max(b for _, b in shifted)
    uniform = len(shifted) == len(edges) and all(pair == shifted[0] for pair in shifted)
    return Axis(
        len(edges), whole(jump), whole(high - low), (low + high) / 2, None if uniform else tuple(edges)
    )


def unit_edges(axis: Axis, index: int) -> Edges:
    """Unit ``index``'s exact box (low, high) in input coordinates; None when no input pixel reaches it."""
    return _box(axis, index)


def _box(axis: Axis, q: int) -> Edges:
    if axis.edges is not None and 0 <= q < axis.size:
        return axis.edges[q]
    centre, half = axis.start + q * axis.jump, Fraction(axis.receptive) / 2
    return centre - half, centre + half


def _hull(axis: Axis, positions: Iterable[int]) -> Edges:
    return _hull_of(_box(axis, q) for q in positions)


def _hull_of(boxes: Iterable[Edges]) -> Edges:
    found = [b for b in boxes if b is not None]
    if not found:
        return None
    return min(b[0] for b in found), max(b[1] for b in found)


@dataclass(frozen=True)
class Variation:
    """How a layer's units' fields differ along one axis. ``receptive_min``/``receptive_max``: the smallest
    and largest unit's box, in input pixels (rounded outward to whole pixels where a box edge falls inside
    a pixel); ``period``: the smallest number of units after which the boxes repeat (shifted by period *
    jump) away from the borders (the middle half of the map), 0 when they do not repeat there, 1 when the
    field is uniform."""

    varies: bool
    receptive_min: int
    receptive_max: int
    period: int


def variation(axis: Axis) -> Variation:
    """The ``Variation`` of ``axis``."""
    if axis.edges is None:
        size = math.ceil(axis.receptive)
        return Variation(False, size, size, 1)
    sizes = [e[1] - e[0] if e is not None else Fraction(0) for e in axis.edges]
    return Variation(True, math.floor(min(sizes)), math.ceil(max(sizes)), _period(axis))


def _period(axis: Axis) -> int:
    assert axis.edges is not None
    n, jump = axis.size, Fraction(axis.jump)
    keys = [None if e is None else (e[0] - o * jump, e[1] - o * jump) for o, e in enumerate(axis.edges)]
    middle = keys[n // 4 : n - n // 4]
    for period in range(1, len(middle) // 2 + 1):
        if all(middle[o] == middle[o + period] for o in range(len(middle) - period)):
            return period
    return 0
