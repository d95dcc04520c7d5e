"""Receptive-field arithmetic, exactly (rational numbers), separately along each spatial axis.

For a layer with kernel k, dilation d (extent e = d*(k-1) + 1), stride s and padding p_before/p_after on an
input with n units, jump j, receptive size r and first centre `start` (Dumoulin & Visin; Araujo et al.):

    n_out     = floor((n + p_before + p_after - e) / s) + 1      (ceil with ceil_mode)
    j_out     = j * s
    r_out     = r + (e - 1) * j
    start_out = start + ((e - 1) / 2 - p_before) * j

Unit i of a layer is centred on start + i*j and spans [centre - r/2, centre + r/2] in input coordinates,
where pixel m of the image is centred on origin + m (origin 0.5: pixel m spans [m, m + 1)).

Layers whose output units read their inputs by a table of taps (resizing of every mode, transposed
convolutions, depth-to-space) divide the jump by their ratio u (output units per input unit, a rational):
j_out = j / u. Their units' fields may differ by position (the phase of a strided transposed convolution,
the fractional positions of a bilinear resize), so each unit's exact box is kept (``Axis.edges``, computed
in ``varying``) and the field quoted is the smallest linear form (start + o * jump, size r) that holds every
unit's exact box.

Branches join (addition, concatenation) with equal size and jump. When their starts differ too (the average
pool shortcut of ResNet-D, a padding that shifts one path) the joined field is the union of the paths' fields,
the exact box of input pixels that can reach a unit, and the merge is recorded as misaligned (Araujo et al.'s
"unaligned" networks); ``strict`` refuses such merges instead, as google-research/receptive_field does.

The field of one unit (its box, the pixels connected to it) is ``boxes``. The errors of the package are
here: each is also the service's domain error whose status it is answered with (``InvalidSpec`` an
``InvalidArgument``, ``UnknownName`` a ``NotFound``, ``Unsupported`` a ``FailedPrecondition``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from nnprobe_services.errors import FailedPrecondition, InvalidArgument, NotFound, ServiceError

if TYPE_CHECKING:
    from nnprobe_services.vision.receptive_fields.varying import Variation

Pads = tuple[int, int, int, int]  # top, bottom, left, right
KINDS = ("input", "conv", "pool", "other", "merge")
#: Largest kernel, stride, dilation and padding of a layer-list layer, along one axis.
MAX_WINDOW = 1 << 20
#: Sizes, jumps and receptive sizes travel as int64.
MAX_INT64 = (1 << 63) - 1
#: Most units one request may ask for (each has a field, a proof and a box in the picture).
MAX_UNITS = 1024


class FieldError(ServiceError):
    """Base of the errors of this package, one branch of the service's domain errors: each subclass is
    also the domain error whose status it is answered with. ``field`` names the request field at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, field=field)


class InvalidSpec(FieldError, InvalidArgument):
    """The layers, sizes or units asked for are impossible (bad numbers, empty output, unknown layer)."""


class UnknownName(FieldError, NotFound):
    """A model name that is not available."""


class Unsupported(FieldError, FailedPrecondition):
    """A valid network whose field cannot be computed: an unmappable operation or misaligned branches."""


#: One unit's exact box along one axis: (low edge, high edge) in input coordinates; None when no input
#: pixel reaches the unit (an output of a transposed convolution whose stride skips it).
Edges = tuple[Fraction, Fraction] | None


@dataclass(frozen=True)
class Axis:
    """Field of a layer along one axis. ``jump`` and ``receptive`` are ints where whole, else Fractions
    (after upsampling); ``edges``: every unit's exact box when the units' fields differ by position (None:
    unit o's box is the linear form, centre start + o * jump, size ``receptive``)."""

    size: int
    jump: int | Fraction
    receptive: int | Fraction
    start: Fraction
    edges: tuple[Edges, ...] | None = None

    def effective_padding(self, origin: Fraction) -> Fraction:
        """Input pixels the first unit's field reaches before the first pixel."""
        return origin + Fraction(self.receptive - 1) / 2 - self.start

    def variation(self) -> Variation:
        """Whether and how the units' fields differ along this axis (``varying.variation``)."""
        from nnprobe_services.vision.receptive_fields.varying import variation

        return variation(self)


@dataclass(frozen=True)
class Window:
    """A sliding window along one axis."""

    kernel: int
    stride: int = 1
    dilation: int = 1
    pad_before: int = 0
    pad_after: int = 0
    ceil_mode: bool = False
    #: How padded positions are filled: ``zeros`` (convolution, pooling, constant padding), ``reflect`` or
    #: ``replicate`` (these read input pixels near the border, which ``connected_pixels`` follows).
    pad_mode: str = "zeros"
    #: Nearest-neighbour upsampling factor applied before the window (kernel 1, stride 1 then).
    upsample: int = 1
    #: A tap table (resizing, transposed convolution): the input positions each output unit reads with a
    #: non-zero weight; positions outside the input (0..n - 1) are padding (virtual positions). None: the
    #: sliding window above (or o // upsample).
    taps: tuple[tuple[int, ...], ...] | None = None
    #: Output units per input unit of a tap table (the jump divides by it).
    ratio: Fraction = Fraction(1)

    @property
    def extent(self) -> int:
        return self.dilation * (self.kernel - 1) + 1


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a layer list. ``padding`` is (top, bottom, left, right), ``"same"`` or ``"valid"``."""

    name: str
    kind: str = "conv"
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] | None = None
    dilation: tuple[int, int] = (1, 1)
    padding: Pads | str = (0, 0, 0, 0)
    ceil_mode: bool = False


@dataclass(frozen=True)
class LayerField:
    """Field of one layer along both axes."""

    name: str
    kind: str
    operation: str
    height: Axis
    width: Axis
    inputs: tuple[str, ...] = ()
    padding: Pads = (0, 0, 0, 0)
    module: str = ""
    windows: tuple[Window, Window] | None = None  # (height, width) for conv and pooling layers
    #: The node after which the whole input reaches this layer's units (global context); "" when none.
    #: The field given is then the local one, through the spatial paths alone.
    global_context: str = ""


@dataclass(frozen=True)
class Misalignment:
    """A merge whose paths' fields have different centres: along ``axis`` (``height`` or ``width``) the
    field through ``path`` starts ``offset`` input pixels after the one through ``reference``."""

    node: str
    axis: str
    reference: str
    path: str
    offset: Fraction


def input_axis(size: int, origin: Fraction) -> Axis:
    return Axis(size=size, jump=1, receptive=1, start=origin)


def same_padding(n: int, window: Window) -> tuple[int, int]:
    """TensorFlow's SAME padding for an input of ``n``: (before, after), the odd pixel after."""
    out = -(-n // window.stride)
    total = max((out - 1) * window.stride + window.extent - n, 0)
    return total // 2, total - total // 2


def output_size(n: int, window: Window) -> int:
    """Output length as PyTorch computes it (may be < 1 when the window does not fit)."""
    span = n + window.pad_before + window.pad_after - window.extent
    if span < 0:
        return 0
    if not window.ceil_mode:
        return span // window.stride + 1
    out = -(-span // window.stride) + 1
    if (out - 1) * window.stride >= n + window.pad_before:
        out -= 1  # the last window would start in the trailing padding
    return out


def apply(axis: Axis, window: Window, *, where: str, field: str | None = None) -> Axis:
    """The field after ``window``; raises ``InvalidSpec`` naming ``where`` when no output is left, and
    ``Unsupported`` when an upsampling would make the jump a fraction of a pixel."""
    if window.upsample > 1 or window.taps is not None:
        from nnprobe_services.vision.receptive_fields.varying import through_taps

        return through_taps(axis, window, where)
    n_out = output_size(axis.size, window)
    if n_out < 1:
        padded = axis.size + window.pad_before + window.pad_after
        raise InvalidSpec(
            f"{where}: the window extent {window.extent} (kernel {window.kernel}, dilation "
            f"{window.dilation}) exceeds the padded input of {padded} "
            f"({axis.size} + padding {window.pad_before}+{window.pad_after}); output size would be < 1",
            field=field,
        )
    linear = Axis(
        size=n_out,
        jump=whole(axis.jump * window.stride),
        receptive=whole(axis.receptive + (window.extent - 1) * axis.jump),
        start=axis.start + (Fraction(window.extent - 1, 2) - window.pad_before) * axis.jump,
    )
    if axis.edges is None:
        return linear
    from nnprobe_services.vision.receptive_fields.varying import through_window

    return through_window(axis, window, linear)


def merge(
    inputs: list[tuple[str, Axis]], *, where: str, axis_name: str, strict: bool = True
) -> tuple[Axis, list[Misalignment]]:
    """Join branches: equal size and jump required. Equal starts give the largest field; different starts
    give the union of the fields (the exact box reaching a unit) and one ``Misalignment`` per shifted path,
    or ``Unsupported`` when ``strict``. ``where`` names the node (``node 'add'``)."""
    first_name, first = inputs[0]
    for name, other in inputs[1:]:
        for attribute in ("size", "jump", "start"):
            a, b = getattr(first, attribute), getattr(other, attribute)
            if a != b and (strict or attribute != "start"):
                raise Unsupported(
                    f"misaligned branches at {where}: along the {axis_name} the {attribute} is "
                    f"{_text(a)} through {first_name} but {_text(b)} through {name}, so the units of the "
                    f"two paths are not centred on the same input pixels",
                    field="model.name" if attribute != "size" else None,
                )
    low = min(a.start - Fraction(a.receptive, 2) for _, a in inputs)
    high = max(a.start + Fraction(a.receptive, 2) for _, a in inputs)
    node = where.split("'")[1] if where.count("'") >= 2 else where
    shifts = [
        Misalignment(node, axis_name, first_name, name, other.start - first.start)
        for name, other in inputs[1:]
        if other.start != first.start
    ]
    if any(a.edges is not None for _, a in inputs):
        from nnprobe_services.vision.receptive_fields.varying import joined

        return joined([a for _, a in inputs]), shifts
    return Axis(first.size, first.jump, whole(high - low), (low + high) / 2), shifts


def whole(value: int | Fraction) -> int | Fraction:
    """``value`` as an int when it is whole (jumps and sizes keep their int form), else the Fraction."""
    return int(value) if Fraction(value).denominator == 1 else Fraction(value)


def _text(value: Fraction | int) -> str:
    return str(float(value)) if isinstance(value, Fraction) else str(value)


def _pair(value: tuple[int, int] | None, name: str, field: str, default: tuple[int, int]) -> tuple[int, int]:
    if value is None:
        return default
    h, w = value
    if h < 1 or w < 1:
        raise InvalidSpec(f"{name} must be >= 1 along both axes, got ({h}, {w})", field=field)
    if h > MAX_WINDOW or w > MAX_WINDOW:
        raise InvalidSpec(f"{name} must be <= {MAX_WINDOW} along both axes, got ({h}, {w})", field=field)
    return int(h), int(w)


def windows(spec: LayerSpec, size: tuple[int, int], index: int) -> tuple[Window, Window]:
    """Validate one layer spec and resolve its padding for an input of ``size``; (height, width)."""
    base = f"layers[{index}]"
    kernel = _pair(spec.kernel, "kernel", f"{base}.kernel", (1, 1))
    default_stride = kernel if spec.kind == "pool" else (1, 1)
    stride = _pair(spec.stride, "stride", f"{base}.stride", default_stride)
    dilation = _pair(spec.dilation, "dilation", f"{base}.dilation", (1, 1))
    result = []
    for axis in range(2):
        window = Window(kernel[axis], stride[axis], dilation[axis], ceil_mode=spec.ceil_mode)
        if spec.padding == "same":
            before, after = same_padding(size[axis], window)
        elif spec.padding == "valid":
            before, after = 0, 0
        elif isinstance(spec.padding, tuple):
            before, after = spec.padding[2 * axis], spec.padding[2 * axis + 1]
            if before < 0 or after < 0:
                raise InvalidSpec(
                    f"padding must be >= 0 on every side, got {spec.padding} (top, bottom, left, right)",
                    field=f"{base}.padding",
                )
            if before > MAX_WINDOW or after > MAX_WINDOW:
                raise InvalidSpec(
                    f"padding must be <= {MAX_WINDOW} on every side, got {spec.padding} "
                    f"(top, bottom, left, right)",
                    field=f"{base}.padding",
                )
        else:
            raise InvalidSpec(f"unknown padding {spec.padding!r}", field=f"{base}.padding_mode")
        result.append(
            Window(window.kernel, window.stride, window.dilation, before, after, ceil_mode=spec.ceil_mode)
        )
    return result[0], result[1]


def describe(kind: str, height: Window, width: Window, label: str = "") -> str:
    """``conv k=(11, 11) s=(4, 4) p=(0, 0, 0, 0)``, plus dilation and ceil_mode when they matter."""
    text = f"{label or kind} k=({height.kernel}, {width.kernel}) s=({height.stride}, {width.stride})"
    text += f" p=({height.pad_before}, {height.pad_after}, {width.pad_before}, {width.pad_after})"
    if height.dilation != 1 or width.dilation != 1:
        text += f" d=({height.dilation}, {width.dilation})"
    if height.ceil_mode:
        text += " ceil"
    return text


def analyse_layers(specs: list[LayerSpec], input_size: tuple[int, int], origin: Fraction) -> list[LayerField]:
    """Fields of a plain chain of layers; the first entry is the input."""
    if not specs:
        raise InvalidSpec("give at least one layer", field="layers")
    names: set[str] = {"input"}
    current = LayerField(
        "input", "input", "input image", input_axis(input_size[0], origin), input_axis(input_size[1], origin)
    )
    fields = [current]
    for index, spec in enumerate(specs):
        if not spec.name:
            raise InvalidSpec("every layer needs a name", field=f"layers[{index}].name")
        if spec.name in names:
            raise InvalidSpec(f"duplicate layer name {spec.name!r}", field=f"layers[{index}].name")
        if spec.kind not in ("conv", "pool", "other"):
            raise InvalidSpec(
                f"kind must be conv, pool or other, not {spec.kind!r}", field=f"layers[{index}].kind"
            )
        names.add(spec.name)
        h, w = windows(spec, (current.height.size, current.width.size), index)
        where = f"layer {spec.name!r} (layers[{index}])"
        field = f"layers[{index}].kernel"
        height = apply(current.height, h, where=f"{where} along the height", field=field)
        width = apply(current.width, w, where=f"{where} along the width", field=field)
        _check_int64(height, f"{where} along the height", f"layers[{index}]")
        _check_int64(width, f"{where} along the width", f"layers[{index}]")
        current = LayerField(
            spec.name,
            spec.kind,
            describe(spec.kind, h, w),
            height,
            width,
            inputs=(current.name,),
            padding=(h.pad_before, h.pad_after, w.pad_before, w.pad_after),
            windows=(h, w),
        )
        fields.append(current)
    return fields


def _check_int64(axis: Axis, where: str, base: str) -> None:
    """The jump (product of strides) and receptive size must fit the response's int64 fields."""
    for value, what, field in ((axis.jump, "jump", "stride"), (axis.receptive, "receptive size", "kernel")):
        if value > MAX_INT64:
            raise InvalidSpec(
                f"{where}: the {what} reaches {value}, more than a 64-bit integer holds",
                field=f"{base}.{field}",
            )
