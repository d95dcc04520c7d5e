"""Which input units each output unit of an antialiased ONNX ``Resize`` (opset 18, ``antialias=1``, linear or
cubic) reads along one axis, as ONNX Runtime computes its weights (``SetupUpsampleFilterAntiAlias``, float32):
a triangle (linear) or Keys cubic filter (``cubic_coeff_a``) of support 2 or 4, widened by the factor when
downsampling, centred on 0.5 + the unit's position in the input (the ``coordinate_transformation_mode``).
Taps outside the input are folded onto its border units, or dropped with ``exclude_outside``; a tap whose
(folded) weight is 0 is not read."""

from __future__ import annotations

import math

import numpy as np

from nnprobe_services.vision.receptive_fields import ir


def _filter(x: np.float32, cubic: bool, a: np.float32) -> np.float32:
    f = np.float32
    x = abs(x)
    if not cubic:
        return f(1) - x if x < f(1) else f(0)
    if x < f(1):
        return ((a + f(2)) * x - (a + f(3))) * x * x + f(1)
    if x < f(2):
        return (((x - f(5)) * x + f(8)) * x - f(4)) * a
    return f(0)


def onnx_antialiased(
    n_in: int, n_out: int, positions: np.ndarray, scale: float | None, op: ir.Upsample
) -> tuple[tuple[int, ...], ...]:
    """Per output unit 0..n_out - 1, the ascending input units (0..n_in - 1) it reads with a non-zero weight.
    ``positions``: each output unit's position in the input (float32, from the coordinate transformation);
    ``scale``: the factor given (output / input), None when the node gives sizes."""
    f = np.float32
    cubic = op.mode == "cubic"
    a = f(op.cubic_coeff_a)
    rscale = f(scale) if scale is not None else f(n_out) / f(n_in)
    ratio = f(1) / rscale  # input units per output unit
    half = f(2 if cubic else 1)
    support = half * ratio if ratio >= f(1) else half
    inv = f(1) / ratio if ratio >= f(1) else f(1)
    taps = []
    for o in range(n_out):
        center = f(0.5) + (f(o) if ratio == f(1) else f(positions[o]))
        low = math.floor(float(center - support) + 0.5)
        high = math.floor(float(center + support) + 0.5)
        if op.exclude_outside:
            low, high = max(low, 0), min(high, n_in)
        sums: dict[int, float] = {}
        for i in range(low, high):
            weight = _filter((f(i) - center + f(0.5)) * inv, cubic, a)
            unit = min(max(i, 0), n_in - 1)
            sums[unit] = float(f(sums.get(unit, 0.0)) + weight)
        taps.append(tuple(sorted(i for i, w in sums.items() if w != 0)))
    return tuple(taps)
