"""The receptive-field workflow with plain inputs and outputs (no gRPC): the layer fields of a layer list or a
model, the fields of chosen units, their proof by back-propagation, the effective field, and a picture.
``compute(FieldRequest, device, should_stop, models) -> FieldResult`` is the one entry point; the servicer
only converts the protobuf request to a ``FieldRequest`` and the ``FieldResult`` back. A model name that the
model repository of ``models`` holds names that model: its ``model.onnx`` is read from its graph
(``frontends.onnx_reader``), its ``model.pt2`` captured from its exported program
(``frontends.trace_worker``), at its configured input size by default; ``verify`` runs the transparent twin of
the graph read. Sizes are (height, width) in input pixels; positions are fractions of a pixel measured from
the first pixel's edge (``origin`` is where the first pixel's centre lies, 1/2 by default). Errors are
``nnprobe_services.errors`` classes naming the request field at fault; ``should_stop`` is polled between
units, samples and drawing steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from nnprobe_services.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    ShouldStop,
)
from nnprobe_services.repository import artifacts
from nnprobe_services.vision.images import decode
from nnprobe_services.vision.models.store import ModelLimits, ModelStore
from nnprobe_services.vision.receptive_fields import arithmetic as rf
from nnprobe_services.vision.receptive_fields import (
    boxes,
    effective,
    empirical,
    graph,
    plot,
    probes,
    tile_proof,
)
from nnprobe_services.vision.receptive_fields.frontends import onnx_reader, onnx_weightless
from nnprobe_services.vision.receptive_fields.values import (
    DEFAULT_ERF_SAMPLES,
    MAX_EMPIRICAL_PIXELS,
    MAX_ERF_IMAGES,
    MAX_ERF_SAMPLES,
    EffectiveOptions,
    EffectiveProtocol,
    EffectiveResult,
    FieldRequest,
    FieldResult,
    RepositoryModel,
    TilingOptions,
    Unit,
    Verification,
)

#: The request and result values live in ``values``; they are named here too, with the entry point.
__all__ = [
    "DEFAULT_ERF_SAMPLES",
    "MAX_EMPIRICAL_PIXELS",
    "MAX_ERF_IMAGES",
    "MAX_ERF_SAMPLES",
    "EffectiveOptions",
    "EffectiveProtocol",
    "EffectiveResult",
    "FieldRequest",
    "FieldResult",
    "RepositoryModel",
    "TilingOptions",
    "Unit",
    "Verification",
    "compute",
    "repository_model",
]

#: Fields an error about the model itself may name; each is answered as the request's ``model_field``.
_MODEL_FIELDS = ("model.name", "model.onnx")


@contextmanager
def _domain_errors(request: FieldRequest) -> Iterator[None]:
    """Every error about the model names the field that carried it (``FieldRequest.model_field``: the
    readers and the field engine serve both named models and bytes), and every error about the input size
    the field that size came from (``FieldRequest.size_field``: the request did not give ``input_size``
    when the model or the picture chose it). The field engine's errors are domain errors already."""
    try:
        yield
    except ServiceError as error:  # the field engine's errors too (``rf.FieldError`` is one)
        error.field = _answered_field(request, error.field)
        raise


def _answered_field(request: FieldRequest, field: str | None) -> str | None:
    if field in _MODEL_FIELDS:
        return request.model_field
    if field == "input_size":
        return request.size_field
    return field


def compute(
    request: FieldRequest, device: torch.device, should_stop: ShouldStop, models: ModelStore | None = None
) -> FieldResult:
    """Run the whole workflow for ``request`` on ``device``; ``models``: where repository models are
    found (None: built-in architectures only). See the module docstring."""
    with _domain_errors(request):
        return _compute(request, device, should_stop, models)


def repository_model(request: FieldRequest, models: ModelStore | None) -> RepositoryModel | None:
    """The repository model ``request`` names, or None when it names none (a layer list, ONNX bytes, a
    built-in architecture). ``NotFound`` for a version the model has not, or a version of a name the
    repository does not hold."""
    if request.onnx or not request.model:
        if request.version:
            raise InvalidArgument("goes with the name of a repository model", field="model.version")
        return None
    repository = models.repository if models is not None else None
    if repository is None or request.model not in repository.names():
        if request.version:
            raise NotFound(f"no model {request.model!r} in the model repository", field="model.name")
        return None
    entry = repository.get(request.model, "model.name")
    if not request.version:
        chosen = entry.default_version
    else:
        found = [v for v in entry.versions if v.version == request.version]
        if not found:
            have = ", ".join(str(v.version) for v in entry.versions)
            raise NotFound(
                f"model {request.model!r} has no version {request.version}; it has {have}",
                field="model.version",
            )
        chosen = found[0]
    assert models is not None
    return RepositoryModel(
        entry.name,
        chosen.version,
        chosen.format,
        chosen.path,
        (entry.config.height, entry.config.width),
        models.limits.max_nodes,
        models.limits.max_bytes,
    )


def _compute(
    request: FieldRequest, device: torch.device, should_stop: ShouldStop, models: ModelStore | None
) -> FieldResult:
    if request.onnx:
        limits = models.limits if models is not None else ModelLimits()
        artifacts.check_onnx_bytes(
            request.onnx,
            max_nodes=limits.max_nodes,
            max_bytes=min(limits.max_bytes, onnx_reader.MAX_ONNX_BYTES),
            field="model.onnx",
        )
        if request.effective is not None or (request.tiling is not None and request.tiling.prove):
            onnx_weightless.refuse_withheld(
                request.onnx, "effective_field" if request.effective else "tiling"
            )
    picture = None
    if request.picture is not None:
        picture = decode.plot_picture(request.picture, plot.MAX_IMAGE_PIXELS)
    user = repository_model(request, models)
    if request.model_options and (user is not None or request.onnx):
        raise InvalidArgument("go with built-in torchvision and timm models only", field="model.options")
    input_size = _input_size(request, picture, user)
    graph, fields, end, resolve = _layer_fields(request, input_size, user)
    if len(request.units) > rf.MAX_UNITS:
        raise ResourceExhausted(
            f"asks for {len(request.units)} units; the limit is {rf.MAX_UNITS}", field="units"
        )
    queries = [
        (resolve(layer, f"units[{i}].layer"), x, y, i) for i, (layer, x, y) in enumerate(request.units)
    ]
    if not queries and (request.verify or request.plot):
        x, y = boxes.center_unit(next(f for f in fields if f.name == end))
        queries = [(end, x, y, -1)]
    origin = request.origin
    units = [
        boxes.unit_field(fields, layer, x, y, input_size, origin, field=f"units[{i}]" if i >= 0 else "units")
        for layer, x, y, i in queries
    ]
    result = FieldResult(fields, end, input_size, origin, units, model=request.model, graph=graph)
    if (request.verify or request.effective is not None) and input_size[0] * input_size[
        1
    ] > MAX_EMPIRICAL_PIXELS:
        raise ResourceExhausted(
            f"is {input_size[0]} x {input_size[1]}; back-propagation checks allow at most "
            f"{MAX_EMPIRICAL_PIXELS} pixels{_size_hint(request)}",
            field="input_size",
        )
    probe = probes.prober(request, input_size, device, graph, user)
    if request.verify:
        result.verifications = _verify(units, probe, input_size, device, should_stop)
        result.verified = all(v.matches for v in result.verifications)
    if request.effective is not None:
        result.effective = effective.effective_field(
            request, fields, resolve, end, probe, input_size, device, should_stop, user, models
        )
    if request.tiling is not None:
        result.tiling = tile_proof.tiling(request, result, probe, user, device, should_stop)
    if request.plot:
        result.plot_png = _plot(result, picture, should_stop)
    return result


def _input_size(
    request: FieldRequest, picture: np.ndarray | None, user: RepositoryModel | None
) -> tuple[int, int]:
    if request.input_size is not None:
        size = request.input_size
    elif picture is not None:
        size = (int(picture.shape[0]), int(picture.shape[1]))
    elif user is not None:
        size = user.input_size
    elif request.onnx:
        size = onnx_reader.declared_size(request.onnx) or (224, 224)
    elif request.model:
        size = graph.default_size(request.model, request.model_options)
    else:
        raise InvalidArgument("is required with `layers` (height and width of the input)", field="input_size")
    limit = request.max_elements
    if size[0] * size[1] * 3 > limit:
        raise ResourceExhausted(
            f"{size[0]} x {size[1]} x 3 exceeds the limit of {limit} elements{_size_hint(request)}",
            field="input_size",
        )
    return size


def _size_hint(request: FieldRequest) -> str:
    """What to do about an input size the request did not choose."""
    if request.size_field == "input_size":
        return ""
    return f" (the input size of {request.size_field}; give a smaller input_size)"


Resolver = Callable[[str, str], str]


def _layer_fields(
    request: FieldRequest, input_size: tuple[int, int], user: RepositoryModel | None
) -> tuple[graph.GraphField | None, list[rf.LayerField], str, Resolver]:
    """The model's analysis (None for a layer list), the fields up to the end point, the end point's name,
    and a resolver of layer names in requests."""
    if user is not None:
        end_point = request.end_point or None
        if user.format == "onnx":
            analysis = graph.analyse(
                user.name,
                probes.onnx_bytes(user),
                input_size,
                request.origin,
                end_point,
                strict=request.strict,
            )
        else:
            program = probes.program_of(user)
            analysis = graph.analyse_program(
                program, input_size, request.origin, end_point, strict=request.strict
            )
        return analysis, analysis.fields, analysis.end_point, analysis.resolve
    if request.has_model:
        analysis = graph.analyse(
            request.model,
            request.onnx,
            input_size,
            request.origin,
            request.end_point or None,
            strict=request.strict,
            options=request.model_options,
        )
        return analysis, analysis.fields, analysis.end_point, analysis.resolve
    fields = rf.analyse_layers(list(request.layers or []), input_size, request.origin)
    names = [f.name for f in fields]

    def resolve(name: str, request_field: str) -> str:
        if name not in names:
            raise InvalidArgument(
                f"no layer {name!r}; the layers are {', '.join(names)}", field=request_field
            )
        return name

    end = resolve(request.end_point, "end_point") if request.end_point else names[-1]
    return None, fields[: names.index(end) + 1], end, resolve


def _verify(
    units: list[boxes.UnitField],
    probe: probes.Prober,
    input_size: tuple[int, int],
    device: torch.device,
    should_stop: ShouldStop,
) -> list[Verification]:
    network, channels = probe(sorted({u.layer for u in units}), "transparent", 0)
    proven = empirical.gradient_boxes(
        network, channels, input_size, device, [(u.layer, u.x, u.y) for u in units], should_stop
    )
    return [
        Verification(
            box, (box.first_row, box.last_row, box.first_column, box.last_column) == (*u.rows, *u.columns)
        )
        for u, box in zip(units, proven, strict=True)
    ]


def _plot(result: FieldResult, picture: np.ndarray | None, should_stop: ShouldStop) -> bytes:
    effective = result.effective
    return plot.render(
        result.input_size,
        float(result.origin),
        result.units,
        image=picture,
        gradient_map=effective.summary.gradient_map if effective is not None else None,
        gradient_unit=effective.field if effective is not None else None,
        title=f"{result.model or 'layer list'}: receptive fields (dashed: unclipped)",
        should_stop=should_stop,
    )
