"""ComputeReceptiveField messages to plain values and back: ``field_request`` builds the core's
``FieldRequest`` (checking what the message alone can tell), ``field_response`` turns a ``FieldResult`` into
the response. The work itself is ``workflow.compute``."""

from __future__ import annotations

import math
from fractions import Fraction

from nnprobe import tensors
from nnprobe.api.vision.v1 import vision_pb2 as pb

from nnprobe_services import validation as valid
from nnprobe_services.errors import InvalidArgument, ResourceExhausted
from nnprobe_services.vision.images.decode import ImageInput
from nnprobe_services.vision.receptive_fields import arithmetic as rf
from nnprobe_services.vision.receptive_fields import boxes, model_options, tiling, workflow

KINDS = {
    pb.LAYER_KIND_UNSPECIFIED: "conv",
    pb.LAYER_KIND_CONV: "conv",
    pb.LAYER_KIND_POOL: "pool",
    pb.LAYER_KIND_OTHER: "other",
}
KIND_CODES = {
    "input": pb.LAYER_KIND_INPUT,
    "conv": pb.LAYER_KIND_CONV,
    "pool": pb.LAYER_KIND_POOL,
    "other": pb.LAYER_KIND_OTHER,
    "merge": pb.LAYER_KIND_MERGE,
}


# -- request ---------------------------------------------------------------------------------------------
def field_request(request: pb.ComputeReceptiveFieldRequest, max_elements: int) -> workflow.FieldRequest:
    """The plain request; raises ``InvalidArgument``/``ResourceExhausted`` naming the field at fault.

    Decodes a raw plot ``Tensor`` (up to ``max_elements`` values), so it belongs in a compute thread.
    """
    has_model = request.HasField("model")
    if has_model == bool(request.layers):
        raise InvalidArgument("give exactly one of `layers` and `model`", field="layers")
    origin = _origin(request)
    picture = _picture(request, max_elements)
    input_size = None
    if request.HasField("input_size"):
        input_size = (
            valid.positive(request.input_size.height, "input_size.height"),
            valid.positive(request.input_size.width, "input_size.width"),
        )
    model = request.model.name.strip() if has_model else ""
    if has_model and not model and not request.model.onnx:
        raise InvalidArgument("must name a model", field="model.name")
    layers = None if has_model else [_layer_spec(layer, i) for i, layer in enumerate(request.layers)]
    effective = None
    if request.HasField("effective_field"):
        options = request.effective_field
        samples = valid.positive(
            options.num_samples,
            "effective_field.num_samples",
            default=workflow.DEFAULT_ERF_SAMPLES,
            maximum=workflow.MAX_ERF_SAMPLES,
        )
        unit = (options.unit.layer, options.unit.x, options.unit.y) if options.HasField("unit") else None
        weight_seed = request.model.seed if has_model else options.seed
        effective = workflow.EffectiveOptions(
            samples,
            options.seed,
            weight_seed,
            unit,
            _erf_weights(options.weights),
            _erf_images(options, max_elements),
        )
    return workflow.FieldRequest(
        origin=origin,
        layers=layers,
        model=model,
        input_size=input_size,
        end_point=request.end_point,
        units=[(u.layer, u.x, u.y) for u in request.units],
        verify=request.verify,
        effective=effective,
        plot=request.HasField("plot"),
        picture=picture,
        max_elements=max_elements,
        onnx=request.model.onnx if has_model else b"",
        strict=request.strict,
        version=_version(request.model.version) if has_model else 0,
        model_options=model_options.canonical(request.model.options) if has_model else (),
        tiling=_tiling(request),
        weight_seed=request.model.seed if has_model else 0,
    )


def _erf_weights(code: int) -> str:
    """``effective_field.weights``: "" (the model's default), ``random`` or ``trained``."""
    names: dict[int, str] = {pb.EFFECTIVE_WEIGHTS_RANDOM: "random", pb.EFFECTIVE_WEIGHTS_TRAINED: "trained"}
    code = valid.enum_value(
        code, pb.EffectiveWeights, "effective_field.weights", pb.EFFECTIVE_WEIGHTS_UNSPECIFIED
    )
    return names.get(code, "")


def _erf_images(options: pb.EffectiveFieldOptions, max_elements: int) -> tuple[ImageInput, ...]:
    """``effective_field.images``: each as encoded bytes or raw pixels (checked when decoded)."""
    if len(options.images) > workflow.MAX_ERF_IMAGES:
        raise ResourceExhausted(
            f"holds {len(options.images)} images; the limit is {workflow.MAX_ERF_IMAGES}",
            field="effective_field.images",
        )
    images = []
    for index, image in enumerate(options.images):
        field = f"effective_field.images[{index}]"
        if image.encoded:
            images.append(ImageInput(image.encoded, None, f"{field}.encoded", image.name))
        elif image.HasField("pixels"):
            pixels = valid.tensor(image.pixels, f"{field}.pixels", max_elements=max_elements, ndim=3)
            images.append(ImageInput(b"", pixels, f"{field}.pixels", image.name))
        else:
            raise InvalidArgument("give `encoded` bytes or `pixels`", field=field)
    return tuple(images)


def _tiling(request: pb.ComputeReceptiveFieldRequest) -> workflow.TilingOptions | None:
    """``tiling``: the tile's height and width (>= 1; their alignment is checked against the model)."""
    if not request.HasField("tiling"):
        return None
    tile = (
        valid.positive(request.tiling.tile_height, "tiling.tile_height"),
        valid.positive(request.tiling.tile_width, "tiling.tile_width"),
    )
    return workflow.TilingOptions(tile, request.tiling.prove)


def _version(version: int) -> int:
    """``model.version``: 0 (the default version) or a positive version of a repository model."""
    if version < 0:
        raise InvalidArgument(f"must be >= 0, got {version}", field="model.version")
    return version


def _origin(request: pb.ComputeReceptiveFieldRequest) -> Fraction:
    if not request.HasField("first_pixel_center"):
        return Fraction(1, 2)
    value = request.first_pixel_center
    if not math.isfinite(value):
        raise InvalidArgument(f"must be a finite number, got {value}", field="first_pixel_center")
    return Fraction(value)


def _picture(request: pb.ComputeReceptiveFieldRequest, max_elements: int) -> ImageInput | None:
    if not request.HasField("plot") or not request.plot.HasField("image"):
        return None
    image = request.plot.image
    if image.encoded:
        return ImageInput(image.encoded, None, "plot.image.encoded")
    if image.HasField("pixels"):
        pixels = valid.tensor(image.pixels, "plot.image.pixels", max_elements=max_elements, ndim=3)
        return ImageInput(b"", pixels, "plot.image.pixels")
    raise InvalidArgument("give `encoded` bytes or `pixels`", field="plot.image")


def _layer_spec(layer: pb.LayerSpec, index: int) -> rf.LayerSpec:
    base = f"layers[{index}]"
    kind = KINDS.get(layer.kind)
    if kind is None:
        raise InvalidArgument(f"must be conv, pool or other, not {layer.kind}", field=f"{base}.kind")
    if not layer.HasField("kernel"):
        raise InvalidArgument("is required", field=f"{base}.kernel")

    def pair(message: pb.Extent, present: bool) -> tuple[int, int] | None:
        return (int(message.height), int(message.width)) if present else None

    mode = valid.enum_value(
        layer.padding_mode, pb.PaddingMode, f"{base}.padding_mode", pb.PADDING_MODE_EXPLICIT
    )
    padding: rf.Pads | str
    if mode == pb.PADDING_MODE_SAME:
        padding = "same"
    elif mode == pb.PADDING_MODE_VALID:
        padding = "valid"
    else:
        p = layer.padding
        padding = (int(p.top), int(p.bottom), int(p.left), int(p.right))
    if mode in (pb.PADDING_MODE_SAME, pb.PADDING_MODE_VALID) and layer.HasField("padding"):
        raise InvalidArgument("must be absent with SAME or VALID padding_mode", field=f"{base}.padding")
    return rf.LayerSpec(
        name=layer.name,
        kind=kind,
        kernel=(int(layer.kernel.height), int(layer.kernel.width)),
        stride=pair(layer.stride, layer.HasField("stride")),
        dilation=pair(layer.dilation, layer.HasField("dilation")) or (1, 1),
        padding=padding,
        ceil_mode=layer.ceil_mode,
    )


# -- response --------------------------------------------------------------------------------------------
def field_response(result: workflow.FieldResult) -> pb.ComputeReceptiveFieldResponse:
    """The response message of ``result``."""
    response = pb.ComputeReceptiveFieldResponse(
        layers=[_layer_message(f, result.origin) for f in result.fields],
        end_point=result.end_point,
        input_size=pb.Extent(height=result.input_size[0], width=result.input_size[1]),
        first_pixel_center=float(result.origin),
        units=[_unit_message(u) for u in result.units],
        model=result.model,
        plot_png=result.plot_png,
    )
    if result.verifications:
        for message, check in zip(response.units, result.verifications, strict=True):
            box = check.box
            message.verification.CopyFrom(
                pb.Verification(
                    rows=pb.PixelRange(first=box.first_row, last=box.last_row),
                    columns=pb.PixelRange(first=box.first_column, last=box.last_column),
                    matches=check.matches,
                )
            )
        response.verified = result.verified
    if result.effective is not None:
        response.effective_field.CopyFrom(_effective_message(result.effective, result.origin))
    if result.tiling is not None:
        response.tiling.CopyFrom(_tiling_message(result.tiling))
    if result.graph is not None:
        graph = result.graph
        response.misaligned_merges.extend(
            pb.MisalignedMerge(
                layer=m.node, axis=m.axis, reference=m.reference, path=m.path, offset=float(m.offset)
            )
            for m in graph.misaligned
        )
        response.global_context = graph.global_context
        response.global_context_module = graph.global_context_module
        response.capture = graph.frontend
        response.model_final_stride = graph.final_stride or 0
    return response


def _tiling_message(plan: tiling.TilingPlan) -> pb.Tiling:
    def extent(pair: tuple[int, int]) -> pb.Extent:
        return pb.Extent(height=pair[0], width=pair[1])

    top, bottom, left, right = plan.halo
    return pb.Tiling(
        layer=plan.layer,
        tile=extent(plan.tile),
        halo=pb.Padding(top=top, bottom=bottom, left=left, right=right),
        stride=extent(plan.stride),
        overlap=extent(plan.overlap),
        window=extent(plan.window),
        alignment=extent(plan.alignment),
        tiles=extent(plan.tiles),
        proved=plan.proved,
        max_abs_diff=plan.max_abs_diff,
        weights=plan.weights,
        dtype=plan.dtype,
    )


def _protocol_message(protocol: workflow.EffectiveProtocol) -> pb.EffectiveProtocol:
    return pb.EffectiveProtocol(
        num_samples=protocol.num_samples,
        seed=protocol.seed,
        inputs=protocol.inputs,
        resolution=pb.Extent(height=protocol.resolution[0], width=protocol.resolution[1]),
        weights=protocol.weights,
        weight_seed=protocol.weight_seed,
        dtype=protocol.dtype,
        model_version=protocol.model_version,
    )


def _effective_message(effective: workflow.EffectiveResult, origin: Fraction) -> pb.EffectiveField:
    layer, x, y = effective.unit
    summary = effective.summary
    protocol = _protocol_message(effective.protocol) if effective.protocol is not None else None
    return pb.EffectiveField(
        unit=pb.UnitQuery(layer=layer, x=x, y=y),
        gradient_map=tensors.to_tensor(summary.gradient_map),
        num_samples=summary.num_samples,
        sigma_height=summary.sigma_height,
        sigma_width=summary.sigma_width,
        center_vertical=float(origin) + summary.mean_row,
        center_horizontal=float(origin) + summary.mean_column,
        pixels_for_95_percent=summary.pixels_for_95_percent,
        theoretical_pixels=summary.theoretical_pixels,
        share_for_95_percent=summary.pixels_for_95_percent / summary.theoretical_pixels,
        mass_inside_field=summary.mass_inside_field,
        protocol=protocol,
    )


def _layer_message(field: rf.LayerField, origin: Fraction) -> pb.LayerField:
    def axis(a: rf.Axis) -> pb.AxisField:
        jump, spread = Fraction(a.jump), a.variation()
        return pb.AxisField(
            size=a.size,
            jump=int(jump) if jump.denominator == 1 else 0,
            receptive_size=math.ceil(a.receptive),
            start=float(a.start),
            effective_padding=float(a.effective_padding(origin)),
            jump_numerator=jump.numerator,
            jump_denominator=jump.denominator,
            varies=spread.varies,
            receptive_min=spread.receptive_min,
            receptive_max=spread.receptive_max,
            period=spread.period,
        )

    top, bottom, left, right = field.padding
    return pb.LayerField(
        name=field.name,
        kind=KIND_CODES[field.kind],
        operation=field.operation,
        module=field.module,
        inputs=list(field.inputs),
        height=axis(field.height),
        width=axis(field.width),
        padding=pb.Padding(top=top, bottom=bottom, left=left, right=right),
        global_context=field.global_context,
    )


def _unit_message(unit: boxes.UnitField) -> pb.UnitField:
    def interval(span: boxes.Span) -> pb.Interval:
        return pb.Interval(start=float(span.start), center=float(span.center), end=float(span.end))

    return pb.UnitField(
        unit=pb.UnitQuery(layer=unit.layer, x=unit.x, y=unit.y),
        vertical=interval(unit.vertical),
        horizontal=interval(unit.horizontal),
        vertical_clipped=interval(unit.vertical_clipped),
        horizontal_clipped=interval(unit.horizontal_clipped),
        rows=pb.PixelRange(first=unit.rows[0], last=unit.rows[1]),
        columns=pb.PixelRange(first=unit.columns[0], last=unit.columns[1]),
    )
