"""Nearest resizing in the transparent twin, apart from the analysis: PyTorch's own ``F.interpolate`` for the
two mappings PyTorch has (``nearest``: asymmetric coordinates rounded down; ``nearest-exact``:
tf_half_pixel_for_nn rounded down), and for ONNX's other modes a gather whose indices are the ONNX
``Resize`` formulas evaluated in float64 tensors, as ONNX Runtime evaluates them in floats. The analysis
computes its mapping with rationals in ``resize_index``; tests hold both to ONNX Runtime."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nnprobe_services.vision.receptive_fields import ir

_TORCH_MODES = {("asymmetric", "floor"): "nearest", ("tf_half_pixel_for_nn", "floor"): "nearest-exact"}


def resize_nearest(x: torch.Tensor, size: tuple[int, int], op: ir.Upsample) -> torch.Tensor:
    """``x`` (N, C, H, W) resized to ``size`` as ``op`` says."""
    torch_mode = _TORCH_MODES.get((op.coordinate_mode, op.nearest_mode))
    if torch_mode is not None and op.scales is None:
        return F.interpolate(x, size=size, mode=torch_mode)
    scales = op.scales or (size[0] / x.shape[2], size[1] / x.shape[3])
    if tuple(x.shape[2:]) == size and scales == (1.0, 1.0):
        return x  # ONNX Runtime copies a resize by 1 unchanged
    rows = source_index(x.shape[2], size[0], scales[0], op, x.device)
    columns = source_index(x.shape[3], size[1], scales[1], op, x.device)
    return x.index_select(2, rows).index_select(3, columns)


def source_index(n_in: int, n_out: int, scale: float, op: ir.Upsample, device: torch.device) -> torch.Tensor:
    """Indices into the input axis of the output axis's units (ONNX ``Resize``, nearest)."""
    o = torch.arange(n_out, dtype=torch.float64, device=device)
    mode = op.coordinate_mode
    if mode in ("half_pixel", "pytorch_half_pixel"):
        x = (o + 0.5) / scale - 0.5
        if mode == "pytorch_half_pixel" and n_out == 1:
            x = torch.zeros_like(o)
    elif mode == "half_pixel_symmetric":
        adjustment = n_out / (scale * n_in)
        x = n_in / 2 * (1 - adjustment) + (o + 0.5) / scale - 0.5
    elif mode == "align_corners":
        x = o * (n_in - 1) / (n_out - 1) if n_out > 1 else torch.zeros_like(o)
    elif mode == "asymmetric":
        x = o / scale
    elif mode == "tf_half_pixel_for_nn":
        x = (o + 0.5) / scale
    else:
        raise ValueError(f"no nearest resize with coordinate_transformation_mode {mode!r}")
    rounded = {
        "round_prefer_floor": lambda: torch.ceil(x - 0.5),
        "round_prefer_ceil": lambda: torch.floor(x + 0.5),
        "floor": lambda: torch.floor(x),
        "ceil": lambda: torch.ceil(x),
    }[op.nearest_mode]()
    return rounded.clamp(0, n_in - 1).to(torch.int64)
