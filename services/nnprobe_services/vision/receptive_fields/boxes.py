"""The field of one unit of a layer: its box in input coordinates (``unit_field``: unclipped and clipped
to the image) and the input pixels actually connected to it (``connected_pixels``: every layer followed back
through its real taps, so padding, strides that skip pixels and the holes of dilated kernels count as they
do in the network). The per-layer arithmetic they start from is ``arithmetic``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from nnprobe_services.vision.receptive_fields.arithmetic import Edges, InvalidSpec, LayerField, Window
from nnprobe_services.vision.receptive_fields.varying import unit_edges

Range = tuple[int, int]  # first, last pixel index (0-based, inclusive); first > last when empty


@dataclass(frozen=True)
class Span:
    """An interval [start, end] along one axis; ``first``/``last`` are the whole pixels inside it."""

    start: Fraction
    end: Fraction
    first: int
    last: int

    @property
    def center(self) -> Fraction:
        return (self.start + self.end) / 2


@dataclass(frozen=True)
class UnitField:
    """The field of one unit: unclipped and clipped spans along each axis."""

    layer: str
    x: int
    y: int
    vertical: Span
    horizontal: Span
    vertical_clipped: Span
    horizontal_clipped: Span
    rows: Range  # input pixel rows connected to the unit (see ``connected_pixels``)
    columns: Range


#: One axis's connected positions of a layer: (offset, mask); position ``offset + i`` is connected when
#: ``mask[i]``. Paths through a network: pairs (rows, columns) whose product is connected.
_Positions = tuple[int, np.ndarray]


def _taps_back(positions: _Positions, window: Window | None, n_in: int) -> _Positions:
    """The input positions read by ``positions`` of a layer's output: output i reads the real taps
    i*stride - pad_before + dilation*t (t = 0..kernel-1) that lie inside the input (0..n_in-1); padding is
    not image and the holes between dilated taps are not read."""
    mapped = window is not None and (window.taps is not None or window.pad_mode != "zeros")
    if window is not None and (mapped or window.upsample > 1):
        return _mapped_taps(positions, window, n_in)
    offset, mask = positions
    if window is None:  # an operation without a window keeps positions
        lo, hi = max(offset, 0), min(offset + len(mask), n_in)
        return (lo, mask[lo - offset : hi - offset]) if lo < hi else (0, mask[:0])
    s, d, k, p = window.stride, window.dilation, window.kernel, window.pad_before
    index = offset + np.flatnonzero(mask)
    if index.size == 0:
        return 0, mask[:0]
    lo = max(int(index[0]) * s - p, 0)
    hi = min(int(index[-1]) * s - p + window.extent - 1, n_in - 1)
    if lo > hi:
        return 0, mask[:0]
    # Input u reads output i when u - (i*s - p) is a multiple of d in 0..d*(k-1): find, for every u, the
    # nearest first tap at or below it in u's residue class modulo d (a sorted search, memory O(span)).
    first = index * s - p
    size = max(hi, int(first[-1])) + 1 - min(lo, int(first[0])) + 1
    shift = -min(lo, int(first[0]))
    keys = np.sort((first % d) * size + first + shift)
    u = np.arange(lo, hi + 1, dtype=np.int64)
    query = (u % d) * size + u + shift
    at = np.searchsorted(keys, query, side="right") - 1
    found = keys[np.maximum(at, 0)]
    same_class = (at >= 0) & (found // size == u % d)
    gap = u + shift - found % size
    return lo, same_class & (gap <= d * (k - 1))


def _dominated(a: tuple[_Positions, _Positions], b: tuple[_Positions, _Positions]) -> bool:
    """Whether every position of pair ``a`` is in pair ``b`` along both axes."""
    return all(_subset(x, y) for x, y in zip(a, b, strict=True))


def _subset(a: _Positions, b: _Positions) -> bool:
    (ao, am), (bo, bm) = a, b
    inside = np.flatnonzero(am) + ao
    if inside.size == 0:
        return True
    if inside[0] < bo or inside[-1] >= bo + len(bm):
        return False
    return bool(bm[inside - bo].all())


def connected_pixels(fields: Sequence[LayerField], name: str, x: int, y: int) -> tuple[Range, Range]:
    """Input rows and columns (first, last; first > last when none) connected to unit (x, y) of ``name``:
    the bounding range of the pixels whose value reaches the unit through some path of non-zero weights.

    Every layer is followed back through its real taps (``_taps_back``): padding is not image, pixels a
    stride never reads and the holes between dilated taps are not connected. Windows are rectangular, so
    along one path the connected pixels are a product of rows and columns; branches keep one (rows,
    columns) pair per distinct path, so a path whose field lies wholly in padding along one axis connects
    nothing along the other either. Exact for every layer kind with a window (convolution, pooling) and
    for element-wise and merging operations.
    """
    by_name = {f.name: f for f in fields}
    one = np.ones(1, dtype=bool)
    need: dict[str, list[tuple[_Positions, _Positions]]] = {name: [((y, one), (x, one))]}
    for f in reversed(fields):
        if f.name not in need or not f.inputs:
            continue
        for source_name in f.inputs:
            source = by_name[source_name]
            sizes = (source.height.size, source.width.size)
            for rows, columns in need[f.name]:
                windows = f.windows or (None, None)
                pair = (_taps_back(rows, windows[0], sizes[0]), _taps_back(columns, windows[1], sizes[1]))
                if not (pair[0][1].any() and pair[1][1].any()):
                    continue
                kept = need.setdefault(source_name, [])
                if any(_dominated(pair, other) for other in kept):
                    continue
                kept[:] = [other for other in kept if not _dominated(other, pair)] + [pair]
    pairs = need.get(fields[0].name, [])
    if not pairs:
        return (0, -1), (0, -1)
    ranges = []
    for axis in range(2):
        firsts = [p[axis][0] + int(np.flatnonzero(p[axis][1])[0]) for p in pairs]
        lasts = [p[axis][0] + int(np.flatnonzero(p[axis][1])[-1]) for p in pairs]
        ranges.append((min(firsts), max(lasts)))
    return ranges[0], ranges[1]


def _mapped_taps(positions: _Positions, w: Window, n_in: int) -> _Positions:
    """``_taps_back`` for windows that read input pixels in place of padding (reflect, replicate) or that
    read a tap table (output o reads ``taps[o]``: resizing, transposed convolution; or o // upsample)."""
    offset, mask = positions
    index = offset + np.flatnonzero(mask)
    if w.taps is not None:
        chosen = [w.taps[i] for i in index]
        read = np.fromiter((t for taps in chosen for t in taps), dtype=np.int64)
    elif w.upsample > 1:
        read = index // w.upsample
    else:
        read = (index[:, None] * w.stride - w.pad_before + w.dilation * np.arange(w.kernel)[None, :]).ravel()
        outside = (read < 0) | (read > n_in - 1)
        if w.pad_mode == "replicate":
            read = np.clip(read, 0, n_in - 1)
        elif w.pad_mode == "reflect":  # -i before the first pixel, 2 (n - 1) - i after the last
            read = np.where(read < 0, -read, np.where(read > n_in - 1, 2 * (n_in - 1) - read, read))
        else:
            read = read[~outside]
    read = read[(read >= 0) & (read < n_in)]
    if read.size == 0:
        return 0, mask[:0]
    lo, hi = int(read.min()), int(read.max())
    found = np.zeros(hi - lo + 1, dtype=bool)
    found[read - lo] = True
    return lo, found


def _exact_span(edges: Edges, centre: Fraction, lo: Fraction, hi: Fraction) -> tuple[Span, Span]:
    """Unclipped and image-clipped spans of one unit's box (``varying.unit_edges``: its exact box, or the
    linear form's); a unit that no pixel reaches gets an empty span at its linear centre. Whole pixels
    (``first``/``last``): those the box touches (a box that continues a fractional jump into the padding
    may end inside a pixel)."""
    start, end = edges if edges is not None else (centre, centre)
    first, last = math.floor(start - lo), math.ceil(end - lo) - 1
    if edges is None:
        first, last = 0, -1
    unclipped = Span(start, end, first, last)
    c_start, c_end = max(start, lo), min(end, hi)
    if c_start > c_end:  # the field lies wholly in the padding
        c_start = c_end = min(max((start + end) / 2, lo), hi)
    n = int(hi - lo)
    clipped = Span(c_start, c_end, max(first, 0), min(last, n - 1))
    return unclipped, clipped


def unit_field(
    fields: Sequence[LayerField],
    name: str,
    x: int,
    y: int,
    input_size: tuple[int, int],
    origin: Fraction,
    *,
    field: str = "units",
) -> UnitField:
    """The field of unit (x, y) (column, row; 0-based) of layer ``name`` among ``fields``; ``field`` is
    the request field of the unit, named in errors."""
    layer = next(f for f in fields if f.name == name)
    for value, axis, label in ((x, layer.width, "x"), (y, layer.height, "y")):
        if not 0 <= value < axis.size:
            raise InvalidSpec(
                f"{label}={value} is outside layer {layer.name!r}, whose output has {axis.size} "
                f"{'columns' if label == 'x' else 'rows'} (valid: 0..{axis.size - 1})",
                field=f"{field}.{label}",
            )
    spans = []
    for index, axis, size in ((y, layer.height, input_size[0]), (x, layer.width, input_size[1])):
        lo = origin - Fraction(1, 2)
        spans.append(_exact_span(unit_edges(axis, index), axis.start + index * axis.jump, lo, lo + size))
    (vertical, vertical_clipped), (horizontal, horizontal_clipped) = spans
    rows, columns = connected_pixels(fields, name, x, y)
    return UnitField(
        layer.name, x, y, vertical, horizontal, vertical_clipped, horizontal_clipped, rows, columns
    )


def center_unit(layer: LayerField) -> tuple[int, int]:
    """(x, y) of the centre unit of a layer's output: (w // 2, h // 2)."""
    return layer.width.size // 2, layer.height.size // 2
