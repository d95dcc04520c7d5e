"""Which input unit each output unit of a nearest-neighbour resize copies, along one axis, in exact rational
arithmetic: the ONNX ``Resize`` definition (opset 11 and later) of every coordinate transformation mode and
rounding mode; PyTorch's ``nearest`` and ``nearest-exact`` are two of them (``asymmetric`` and
``tf_half_pixel_for_nn``, both rounding down).

Output unit ``o`` (of ``n_out``) lies at ``x = transform(o)`` in input coordinates, rounded to an input unit
and clamped to ``0..n_in - 1``. ``scale`` is the factor the operator uses (its ``scales`` input, or
``n_out / n_in`` when it is given sizes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported

Transform = Callable[[int, int, int, Fraction], Fraction]  # (o, n_in, n_out, scale) -> x


def _half_pixel_symmetric(o: int, n_in: int, n_out: int, scale: Fraction) -> Fraction:
    adjustment = Fraction(n_out) / (scale * n_in)
    offset = Fraction(n_in, 2) * (1 - adjustment)
    return offset + (o + Fraction(1, 2)) / scale - Fraction(1, 2)


TRANSFORMS: dict[str, Transform] = {
    "half_pixel": lambda o, n_in, n_out, s: (o + Fraction(1, 2)) / s - Fraction(1, 2),
    "half_pixel_symmetric": _half_pixel_symmetric,
    "pytorch_half_pixel": lambda o, n_in, n_out, s: (
        (o + Fraction(1, 2)) / s - Fraction(1, 2) if n_out > 1 else Fraction(0)
    ),
    "align_corners": lambda o, n_in, n_out, s: (
        Fraction(o * (n_in - 1), n_out - 1) if n_out > 1 else Fraction(0)
    ),
    "asymmetric": lambda o, n_in, n_out, s: o / s,
    "tf_half_pixel_for_nn": lambda o, n_in, n_out, s: (o + Fraction(1, 2)) / s,
}

ROUNDINGS: dict[str, Callable[[Fraction], int]] = {
    "round_prefer_floor": lambda x: math.ceil(x - Fraction(1, 2)),
    "round_prefer_ceil": lambda x: math.floor(x + Fraction(1, 2)),
    "floor": math.floor,
    "ceil": math.ceil,
}


def check_modes(coordinate_mode: str, nearest_mode: str) -> str:
    """ "" when the modes map onto a field, else why not (``tf_crop_and_resize`` reads a region of
    interest and fills outside it with a constant: no fixed copy of an input unit)."""
    if coordinate_mode not in TRANSFORMS:
        known = ", ".join(TRANSFORMS)
        return f"coordinate_transformation_mode {coordinate_mode!r} (supported: {known})"
    if nearest_mode not in ROUNDINGS:
        return f"nearest_mode {nearest_mode!r} (supported: {', '.join(ROUNDINGS)})"
    return ""


def nearest_sources(
    n_in: int, n_out: int, scale: Fraction, coordinate_mode: str, nearest_mode: str
) -> tuple[int, ...]:
    """The input unit (0..n_in - 1) that each output unit 0..n_out - 1 copies."""
    problem = check_modes(coordinate_mode, nearest_mode)
    if problem:
        raise Unsupported(f"nearest resizing with {problem}", field="model.name")
    transform, rounding = TRANSFORMS[coordinate_mode], ROUNDINGS[nearest_mode]
    return tuple(min(max(rounding(transform(o, n_in, n_out, scale)), 0), n_in - 1) for o in range(n_out))
