"""Which input units each output unit of a linear, cubic or antialiased resize reads, along one axis: the
taps whose weight is not zero (a sample at an input position reads that input alone, a cubic tap at
distance 1 or 2 weighs exactly 0 and is not read).

The weights are the operators' own formulas, evaluated as they evaluate them: PyTorch's CPU kernels
(``upsample_bilinear2d``, ``upsample_bicubic2d`` and their ``_aa`` variants: ``area_pixel_compute_scale``,
``area_pixel_compute_source_index``, ``guard_index_and_lambda``, ``_compute_weights_aa``) in float64, as
they run on float64 tensors; ONNX ``Resize`` (every coordinate transformation mode, ``cubic_coeff_a``,
``exclude_outside``) as ONNX Runtime evaluates it, in float32. A weight that is 0 in that arithmetic is a
tap not read. Indices outside the input are clamped to its border, as the operators clamp them.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from nnprobe_services.vision.receptive_fields import ir
from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported
from nnprobe_services.vision.receptive_fields.resize_antialias import onnx_antialiased

Taps = tuple[tuple[int, ...], ...]


def resize_taps(n_in: int, n_out: int, scale: float | None, op: ir.Upsample) -> Taps:
    """Per output unit 0..n_out - 1, the ascending input units (0..n_in - 1) it reads with a non-zero
    weight. ``scale``: the factor the operator was given (output / input), None when it was given sizes."""
    if op.mode not in ("nearest", "linear", "cubic"):
        raise Unsupported(f"{op.mode} resizing (modes: nearest, linear, cubic)", field="model.name")
    if op.formulas == "torch" and op.mode == "nearest":
        return _torch_nearest(n_in, n_out, scale, op.coordinate_mode == "tf_half_pixel_for_nn")
    if op.mode == "nearest":
        raise Unsupported("ONNX nearest resizing is resize_index's", field="model.onnx")
    if op.formulas == "torch":
        if op.antialias:
            return _torch_antialiased(n_in, n_out, scale, op)
        if op.mode == "linear":
            return _torch_linear(n_in, n_out, scale, op.coordinate_mode == "align_corners")
        return _torch_cubic(n_in, n_out, scale, op.coordinate_mode == "align_corners")
    x = onnx_coordinates(n_in, n_out, scale, op.coordinate_mode)
    if op.antialias:
        return onnx_antialiased(n_in, n_out, x, scale, op)
    if op.mode == "linear":
        return _onnx_linear(n_in, x)
    return _onnx_cubic(n_in, x, op)


def _read(index: np.ndarray, weight: np.ndarray, n_in: int) -> Taps:
    """Rows of (clamped index, weight) -> the indices whose summed weight is not zero, per output."""
    index = np.clip(index, 0, n_in - 1)
    taps = []
    for row_index, row_weight in zip(index, weight, strict=True):
        sums: dict[int, float] = {}
        for i, w in zip(row_index.tolist(), row_weight.tolist(), strict=True):
            sums[i] = sums.get(i, 0.0) + w
        taps.append(tuple(sorted(i for i, w in sums.items() if w != 0)))
    return tuple(taps)


# -- PyTorch ---------------------------------------------------------------------------------------------
def _torch_scale(n_in: int, n_out: int, scale: float | None, align_corners: bool) -> float:
    """``area_pixel_compute_scale``: input units per output unit."""
    if align_corners:
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return 1.0 / scale if scale is not None and scale > 0 else n_in / n_out


def _torch_source(n_in: int, n_out: int, scale: float | None, align: bool, cubic: bool) -> np.ndarray:
    """``area_pixel_compute_source_index`` of every output unit: scale * (o + 0.5) - 0.5 rounded once (the
    kernels are compiled to a fused multiply-add)."""
    ratio = _torch_scale(n_in, n_out, scale, align)
    if align:
        return ratio * np.arange(n_out, dtype=np.float64)
    exact = Fraction(ratio)
    source = np.array([float(exact * (o + Fraction(1, 2)) - Fraction(1, 2)) for o in range(n_out)])
    return source if cubic else np.maximum(source, 0.0)


def _guard(source: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """``guard_index_and_lambda``: the index below the sample (``floorf``: the sample rounded to float32
    first) and the fraction past it."""
    index = np.minimum(np.floor(source.astype(np.float32)).astype(np.int64), n_in - 1)
    return index, np.clip(source - index, 0.0, 1.0)


def _torch_nearest(n_in: int, n_out: int, scale: float | None, exact: bool) -> Taps:
    """``nearest_idx`` (floor(o * scale)) and ``nearest_exact_idx`` (floor((o + 0.5) * scale)), the scale
    in float32 as the kernels hold it."""
    if not exact and n_out == n_in:
        return tuple((o,) for o in range(n_out))
    if not exact and n_out == 2 * n_in:
        return tuple((o >> 1,) for o in range(n_out))
    f = np.float32
    ratio = f(1.0 / scale) if scale is not None and scale > 0 else f(n_in) / f(n_out)
    o = np.arange(n_out)
    position = ((o + 0.5) * np.float64(ratio)).astype(f) if exact else o.astype(f) * ratio
    index = np.minimum(np.floor(position).astype(np.int64), n_in - 1)
    return tuple((int(i),) for i in index)


def _torch_linear(n_in: int, n_out: int, scale: float | None, align: bool) -> Taps:
    if n_in == n_out:  # the kernels copy an axis whose size does not change
        return tuple((o,) for o in range(n_out))
    index, lam = _guard(_torch_source(n_in, n_out, scale, align, False), n_in)
    offset = (index < n_in - 1).astype(np.int64)
    indices = np.stack([index, index + offset], axis=1)
    return _read(indices, np.stack([1.0 - lam, lam], axis=1), n_in)


def cubic_coefficients(t: np.ndarray, a: float) -> np.ndarray:
    """``get_cubic_upsample_coefficients``: weights of taps floor - 1 .. floor + 2 at fraction ``t``."""

    def near(x: np.ndarray) -> np.ndarray:  # cubic_convolution1, |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # cubic_convolution2, 1 <= |x| <= 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=1)


def _torch_cubic(n_in: int, n_out: int, scale: float | None, align: bool) -> Taps:
    if n_in == n_out:  # the kernels copy an axis whose size does not change
        return tuple((o,) for o in range(n_out))
    index, t = _guard(_torch_source(n_in, n_out, scale, align, True), n_in)
    indices = index[:, None] + np.arange(-1, 3)[None, :]
    return _read(indices, cubic_coefficients(t, -0.75), n_in)


def _aa_filter(x: np.ndarray, cubic: bool) -> np.ndarray:
    x = np.abs(x)
    if not cubic:
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _torch_antialiased(n_in: int, n_out: int, scale: float | None, op: ir.Upsample) -> Taps:
    """``_compute_weights_aa``: a triangle (bilinear) or Keys cubic (a = -0.5) filter, stretched by the
    factor when downsampling, centred on scale * (o + 0.5). Known limit: downsampling with the cubic filter,
    a tap that falls on a zero of the stretched filter (distance 1 or 2) weighs 0 here, while PyTorch's own
    rounding may give it about 1e-16 (or the reverse), so such a unit's taps may differ by that tap."""
    cubic = op.mode == "cubic"
    ratio = _torch_scale(n_in, n_out, scale, op.coordinate_mode == "align_corners")
    interp = 4.0 if cubic else 2.0
    support = interp * 0.5 * ratio if ratio >= 1.0 else interp * 0.5
    invscale = 1.0 / ratio if ratio >= 1.0 else 1.0
    taps = []
    for o in range(n_out):
        center = ratio * (o + 0.5)
        first = max(int(center - support + 0.5), 0)  # C++ truncation toward zero
        size = min(int(center + support + 0.5), n_in) - first
        j = np.arange(max(size, 0), dtype=np.float64)
        x = (j + first - center + 0.5) * invscale
        weight = _aa_filter(x, cubic)
        taps.append(tuple(int(first + k) for k in np.flatnonzero(weight != 0)))
    return tuple(taps)


# -- ONNX ------------------------------------------------------------------------------------------------
def onnx_coordinates(n_in: int, n_out: int, scale: float | None, mode: str) -> np.ndarray:
    """Each output unit's position in the input (ONNX ``coordinate_transformation_mode``), in float32."""
    f = np.float32
    s = f(scale) if scale is not None else f(n_out) / f(n_in)
    o = np.arange(n_out, dtype=f)
    if mode in ("half_pixel", "pytorch_half_pixel"):
        x = (o + f(0.5)) / s - f(0.5)
        if mode == "pytorch_half_pixel" and n_out == 1:
            x = np.zeros_like(o)
    elif mode == "half_pixel_symmetric":  # the offset in float32, the rest in float64, as ONNX Runtime
        adjustment = f(n_out) / (s * f(n_in))
        offset = f(n_in) / f(2) * (f(1) - adjustment)
        x = (np.float64(offset) + (o.astype(np.float64) + 0.5) / np.float64(s) - 0.5).astype(f)
    elif mode == "align_corners":
        x = o * f(n_in - 1) / f(n_out - 1) if n_out > 1 else np.zeros_like(o)
    elif mode == "asymmetric":
        x = o / s
    else:
        raise Unsupported(
            f"linear or cubic resizing with coordinate_transformation_mode {mode} (supported: half_pixel, "
            f"half_pixel_symmetric, pytorch_half_pixel, align_corners, asymmetric)",
            field="model.onnx",
        )
    return x.astype(f)


def _onnx_linear(n_in: int, x: np.ndarray) -> Taps:
    f = np.float32
    x = np.clip(x, f(0), f(n_in - 1))
    first = np.minimum(x.astype(np.int64), n_in - 1)
    second = np.minimum(first + 1, n_in - 1)
    to_first, to_second = np.abs(x - first.astype(f)), np.abs(x - second.astype(f))
    same = first == second
    weights = np.stack([np.where(same, 0.5, to_second), np.where(same, 0.5, to_first)], axis=1)
    return _read(np.stack([first, second], axis=1), weights, n_in)


def _onnx_cubic(n_in: int, x: np.ndarray, op: ir.Upsample) -> Taps:
    f = np.float32
    base = np.floor(x)
    t = np.abs(x - base).astype(f)
    weights = cubic_coefficients(t, float(f(op.cubic_coeff_a))).astype(f)
    indices = base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    if op.exclude_outside:
        weights = np.where((indices < 0) | (indices > n_in - 1), f(0), weights)
    return _read(indices, weights, n_in)
