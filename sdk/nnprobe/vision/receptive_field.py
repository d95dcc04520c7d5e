"""Receptive fields: layer lists, unit boxes, their verification, effective fields and plots."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnprobe import tensors
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.display import rich_result
from nnprobe.pngs import encode_png
from nnprobe.vision import field_tiling as dense
from nnprobe.vision.field_axes import AxisField, axis_field
from nnprobe.vision.images import image_message

_KINDS = {"conv": pb.LAYER_KIND_CONV, "pool": pb.LAYER_KIND_POOL, "other": pb.LAYER_KIND_OTHER}
_KIND_NAMES = {
    pb.LAYER_KIND_INPUT: "input",
    pb.LAYER_KIND_CONV: "conv",
    pb.LAYER_KIND_POOL: "pool",
    pb.LAYER_KIND_OTHER: "other",
    pb.LAYER_KIND_MERGE: "merge",
}

Pair = int | Sequence[int]


@rich_result()
@dataclass(frozen=True)
class Layer:
    """One layer of a layer list.

    ``kernel``, ``stride``, ``dilation``: an int or (h, w). ``stride`` defaults to the kernel for ``pool``
    layers (as in PyTorch) and to 1 otherwise. ``padding``: an int, (h, w), (top, bottom, left, right),
    ``"same"`` (TensorFlow's SAME) or ``"valid"``.
    """

    name: str
    kernel: Pair
    stride: Pair | None = None
    padding: Pair | str = 0
    dilation: Pair | None = None
    kind: str = "conv"
    ceil_mode: bool = False


@rich_result()
@dataclass
class LayerField:
    """Receptive-field geometry of one layer."""

    name: str
    kind: str
    operation: str
    module: str
    inputs: list[str]
    height: AxisField
    width: AxisField
    #: Padding applied (top, bottom, left, right).
    padding: tuple[int, int, int, int]


@rich_result()
@dataclass
class Interval:
    """[start, end] along one axis, with its centre."""

    start: float
    center: float
    end: float


@rich_result()
@dataclass
class Verification:
    """Rows and columns (first, last) of non-zero input gradient, and whether they equal the analytic box."""

    rows: tuple[int, int]
    columns: tuple[int, int]
    matches: bool


@rich_result()
@dataclass
class UnitField:
    """The field of one unit (x = column, y = row of its layer's output)."""

    layer: str
    x: int
    y: int
    vertical: Interval
    horizontal: Interval
    vertical_clipped: Interval
    horizontal_clipped: Interval
    #: Input pixel rows (first, last; 0-based, inclusive) connected to the unit.
    rows: tuple[int, int]
    #: Input pixel columns connected to the unit.
    columns: tuple[int, int]
    verification: Verification | None = None


@rich_result(pictures=("gradient_map_png",))
@dataclass
class EffectiveField:
    """Effective receptive field (Luo et al., 2016) of one unit."""

    layer: str
    x: int
    y: int
    #: Mean |dy/dx| over samples and input channels, (height, width) float64.
    gradient_map: np.ndarray
    num_samples: int
    sigma_height: float
    sigma_width: float
    center_vertical: float
    center_horizontal: float
    pixels_for_95_percent: int
    theoretical_pixels: int
    share_for_95_percent: float
    mass_inside_field: float
    #: How the map was measured (inputs, seeds, resolution, weights).
    protocol: dense.EffectiveProtocol | None = None

    @property
    def gradient_map_png(self) -> bytes | None:
        """``gradient_map`` as a gray PNG (black 0, white its maximum; drawn here), None when empty."""
        values = np.asarray(self.gradient_map, dtype=np.float64)
        if values.ndim != 2 or not values.size:
            return None
        peak = float(values.max())
        scaled = values / peak if peak > 0 else values
        return encode_png(np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8))


@rich_result(pictures=("plot_png",), tables={"layers": "layers", "units": "units"})
@dataclass
class ReceptiveFieldResult:
    """Outcome of ``compute_receptive_field``."""

    layers: list[LayerField]
    end_point: str
    input_size: tuple[int, int]
    first_pixel_center: float
    units: list[UnitField]
    verified: bool
    effective_field: EffectiveField | None
    #: PNG bytes when a plot was asked for.
    plot_png: bytes
    model: str
    raw: Any = field(repr=False, default=None)
    #: The layer after which the end point's units see the whole input ("" when none): the fields are then
    #: local ones. ``global_context_module``: its module path.
    global_context: str = ""
    global_context_module: str = ""
    #: Misaligned merges as (layer, axis, reference path, shifted path, offset in pixels).
    misaligned_merges: list[tuple[str, str, str, str, float]] = field(default_factory=list)
    #: How the model was read (torch.export, torch.fx, onnx) and its own final stride (0: not declared).
    capture: str = ""
    model_final_stride: int = 0
    #: The overlap-tile plan, when ``tiling`` was given.
    tiling: dense.Tiling | None = None

    def layer(self, name: str) -> LayerField:
        """The layer called ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def save_plot(self, path: str | Path) -> Path:
        """Write the PNG picture to ``path``."""
        if not self.plot_png:
            raise ValueError("the result has no picture; pass plot=True")
        target = Path(path)
        target.write_bytes(self.plot_png)
        return target


def _pair(value: Pair, name: str) -> pb.Extent:
    if isinstance(value, (int, np.integer)):
        return pb.Extent(height=int(value), width=int(value))
    values = list(value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or (height, width), not {value!r}")
    return pb.Extent(height=int(values[0]), width=int(values[1]))


def _layer_message(layer: Layer) -> pb.LayerSpec:
    if layer.kind not in _KINDS:
        raise ValueError(f"kind must be one of {list(_KINDS)}, not {layer.kind!r}")
    message = pb.LayerSpec(
        name=layer.name,
        kind=_KINDS[layer.kind],
        kernel=_pair(layer.kernel, "kernel"),
        ceil_mode=layer.ceil_mode,
    )
    if layer.stride is not None:
        message.stride.CopyFrom(_pair(layer.stride, "stride"))
    if layer.dilation is not None:
        message.dilation.CopyFrom(_pair(layer.dilation, "dilation"))
    padding = layer.padding
    if isinstance(padding, str):
        modes = {"same": pb.PADDING_MODE_SAME, "valid": pb.PADDING_MODE_VALID}
        if padding.lower() not in modes:
            raise ValueError(f"padding must be a number, a tuple, 'same' or 'valid', not {padding!r}")
        message.padding_mode = modes[padding.lower()]
        return message
    values = [int(padding)] * 4 if isinstance(padding, (int, np.integer)) else [int(p) for p in padding]
    if len(values) == 2:
        values = [values[0], values[0], values[1], values[1]]
    if len(values) != 4:
        raise ValueError(f"padding must be p, (h, w) or (top, bottom, left, right), not {padding!r}")
    message.padding_mode = pb.PADDING_MODE_EXPLICIT
    message.padding.CopyFrom(pb.Padding(top=values[0], bottom=values[1], left=values[2], right=values[3]))
    return message


def _unit_query(unit: Any) -> pb.UnitQuery:
    if isinstance(unit, pb.UnitQuery):
        return unit
    layer, x, y = unit
    return pb.UnitQuery(layer=str(layer), x=int(x), y=int(y))


def _effective_field_options(
    samples: int, seed: int, unit: tuple[str, int, int] | None, weights: str | None, images: Iterable[Any]
) -> pb.EffectiveFieldOptions:
    options = pb.EffectiveFieldOptions(num_samples=samples, seed=seed)
    if unit is not None:
        options.unit.CopyFrom(_unit_query(unit))
    return dense.add_effective_options(options, weights, images)


def _size_and_plot(
    request: pb.ComputeReceptiveFieldRequest,
    input_size: Pair | None,
    first_pixel_center: float | None,
    plot: bool,
    image: bytes | str | Path | np.ndarray | None,
) -> None:
    """The input size, the origin and the picture's options of ``request``, when given."""
    if input_size is not None:
        request.input_size.CopyFrom(_pair(input_size, "input_size"))
    if first_pixel_center is not None:
        request.first_pixel_center = float(first_pixel_center)
    if plot or image is not None:
        request.plot.CopyFrom(pb.PlotOptions())
        if image is not None:
            request.plot.image.CopyFrom(image_message(image))


def _interval(message: pb.Interval) -> Interval:
    return Interval(message.start, message.center, message.end)


def _layer_field(f: pb.LayerField) -> LayerField:
    return LayerField(
        name=f.name,
        kind=_KIND_NAMES.get(f.kind, str(f.kind)),
        operation=f.operation,
        module=f.module,
        inputs=list(f.inputs),
        height=axis_field(f.height),
        width=axis_field(f.width),
        padding=(f.padding.top, f.padding.bottom, f.padding.left, f.padding.right),
    )


def _unit_field(u: pb.UnitField) -> UnitField:
    verification = None
    if u.HasField("verification"):
        v = u.verification
        verification = Verification((v.rows.first, v.rows.last), (v.columns.first, v.columns.last), v.matches)
    return UnitField(
        layer=u.unit.layer,
        x=u.unit.x,
        y=u.unit.y,
        vertical=_interval(u.vertical),
        horizontal=_interval(u.horizontal),
        vertical_clipped=_interval(u.vertical_clipped),
        horizontal_clipped=_interval(u.horizontal_clipped),
        rows=(u.rows.first, u.rows.last),
        columns=(u.columns.first, u.columns.last),
        verification=verification,
    )


def _effective_field(e: pb.EffectiveField) -> EffectiveField:
    return EffectiveField(
        layer=e.unit.layer,
        x=e.unit.x,
        y=e.unit.y,
        gradient_map=tensors.to_numpy(e.gradient_map),
        num_samples=e.num_samples,
        sigma_height=e.sigma_height,
        sigma_width=e.sigma_width,
        center_vertical=e.center_vertical,
        center_horizontal=e.center_horizontal,
        pixels_for_95_percent=e.pixels_for_95_percent,
        theoretical_pixels=e.theoretical_pixels,
        share_for_95_percent=e.share_for_95_percent,
        mass_inside_field=e.mass_inside_field,
        protocol=dense.protocol_result(e.protocol) if e.HasField("protocol") else None,
    )


def _result(r: pb.ComputeReceptiveFieldResponse) -> ReceptiveFieldResult:
    return ReceptiveFieldResult(
        layers=[_layer_field(f) for f in r.layers],
        end_point=r.end_point,
        input_size=(r.input_size.height, r.input_size.width),
        first_pixel_center=r.first_pixel_center,
        units=[_unit_field(u) for u in r.units],
        verified=r.verified,
        effective_field=_effective_field(r.effective_field) if r.HasField("effective_field") else None,
        plot_png=r.plot_png,
        model=r.model,
        raw=r,
        global_context=r.global_context,
        global_context_module=r.global_context_module,
        misaligned_merges=[(m.layer, m.axis, m.reference, m.path, m.offset) for m in r.misaligned_merges],
        capture=r.capture,
        model_final_stride=r.model_final_stride,
        tiling=dense.tiling_result(r.tiling) if r.HasField("tiling") else None,
    )
