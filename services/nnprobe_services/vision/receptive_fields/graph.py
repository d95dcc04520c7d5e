"""Receptive fields of whole models: capture (``frontends.trace_worker``), propagate (``propagate``), then
pick the end point and the layers on its local paths.

The default end point is the network's last spatial feature map (global pooling and the classifier excluded);
its jump is the model's own final stride. A unit's field is the union over its paths; misaligned merges and
the node that brings global context are reported, or refused with ``strict`` (the behaviour of
google-research/receptive_field).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from torch import nn

from nnprobe_services.vision.receptive_fields.arithmetic import (
    FieldError,
    InvalidSpec,
    LayerField,
    Misalignment,
    Unsupported,
)
from nnprobe_services.vision.receptive_fields.catalogue import (  # noqa: F401  (the model catalogue, re-exported)
    RESNET_STAGES,
    TORCHVISION,
    available_models,
    build,
    default_input_size,
    default_size,
)
from nnprobe_services.vision.receptive_fields.frontends import trace_worker
from nnprobe_services.vision.receptive_fields.ir import AdaptivePool, Capture
from nnprobe_services.vision.receptive_fields.model_options import ModelOptions
from nnprobe_services.vision.receptive_fields.propagate import Analysis


@dataclass
class GraphField:
    """The outcome of analysing a captured model."""

    fields: list[LayerField]  # the end point and every layer on its local paths, topological order
    end_point: str
    resolve: Callable[[str, str], str]  # (name, request field) -> layer name in ``fields``
    misaligned: list[Misalignment]  # the misaligned merges among ``fields``
    global_context: str  # the node after which the end point's units see the whole input ("": none)
    frontend: str  # torch.export, torch.fx or onnx
    final_stride: int | None  # the model's own final stride, when it declares one
    capture: Capture  # what was analysed
    global_context_module: str = ""  # module path of ``global_context``, when known


def analyse(
    name: str,
    onnx: bytes,
    input_size: tuple[int, int],
    origin: Fraction,
    end_point: str | None,
    *,
    strict: bool = False,
    options: ModelOptions = (),
) -> GraphField:
    """A named model built with constructor ``options`` (``analyse_model``) or, when ``onnx`` holds bytes,
    an ONNX model read from its graph (``onnx_reader.read``; ``name`` then only labels it)."""
    if not onnx:
        return analyse_model(name, input_size, origin, end_point, strict=strict, options=options)
    from nnprobe_services.vision.receptive_fields.frontends import onnx_reader

    capture = onnx_reader.read(onnx, input_size, name or "onnx model")
    return analyse_capture(capture, origin, end_point, strict=strict)


def analyse_program(
    program: trace_worker.Program,
    input_size: tuple[int, int],
    origin: Fraction,
    end_point: str | None,
    *,
    strict: bool = False,
) -> GraphField:
    """A ``torch.export`` archive of the model repository, captured from its program's module at
    ``input_size`` in the worker process (cached per file and size)."""
    capture = trace_worker.captured_program(program, input_size)[0]
    return analyse_capture(capture, origin, end_point, strict=strict)


def captured(name: str, input_size: tuple[int, int], options: ModelOptions = ()) -> Capture:
    """The capture of model ``name`` built with ``options`` at ``input_size`` (cached; captured in a
    worker process)."""
    return trace_worker.captured(name, input_size, options)[0]


def analyse_model(
    name: str,
    input_size: tuple[int, int],
    origin: Fraction,
    end_point: str | None,
    *,
    strict: bool = False,
    options: ModelOptions = (),
) -> GraphField:
    """Fields of every layer of model ``name`` (built with constructor ``options``) on the way to
    ``end_point`` (default: last feature map).

    Raises ``UnknownName`` (no such model), ``InvalidSpec`` (the input is too small, an unknown layer, an
    option the model does not take) or ``Unsupported`` naming the operation and the node that cannot be
    mapped."""
    try:
        capture = captured(name, input_size, options)
    except Unsupported as error:
        _explain_size(name, input_size, origin, options)
        raise error
    return analyse_capture(capture, origin, end_point, strict=strict)


def _explain_size(
    name: str, input_size: tuple[int, int], origin: Fraction, options: ModelOptions = ()
) -> None:
    """When the capture failed at ``input_size``: the arithmetic on the default size's graph says whether
    the input is too small, naming the node (``InvalidSpec`` on ``input_size``)."""
    size = default_size(name, options)
    if input_size == size:
        return
    try:
        reference = captured(name, size, options)
    except FieldError:
        return
    run = Analysis(reference, origin, False, input_size)
    for problem in run.problems.values():
        if isinstance(problem, InvalidSpec):
            raise InvalidSpec(problem.message, field=problem.field)


def analyse_module(
    module: nn.Module,
    name: str,
    input_size: tuple[int, int],
    origin: Fraction,
    end_point: str | None,
    *,
    channels: int = 3,
    strict: bool = False,
) -> GraphField:
    """Capture ``module`` in this process (tests, small modules) and analyse it."""
    from nnprobe_services.vision.receptive_fields.frontends import torch_capture

    capture, _ = torch_capture.capture(module, name, input_size, channels, None)
    return analyse_capture(capture, origin, end_point, strict=strict)


def analyse_capture(
    capture: Capture, origin: Fraction, end_point: str | None, *, strict: bool = False
) -> GraphField:
    """Fields of the layers of a capture on the way to ``end_point`` (default: last spatial feature map)."""
    run = Analysis(capture, origin, strict)
    resolve_node = _resolver(capture, run)
    end = resolve_node(end_point, "end_point") if end_point else _default_end_point(capture, run)
    if end not in run.values or run.values[end].field is None:
        problem = run.problems.get(end)
        if problem is None:
            raise Unsupported(
                f"cannot compute the receptive field of {end!r} in {capture.model}: it has no image axes "
                f"(it follows a global pooling or a flatten) or is uniform over the image; choose an earlier "
                f"end_point",
                field="end_point" if end_point else "model.name",
            )
        message = (
            f"cannot compute the receptive field of {end!r} in {capture.model}: "
            f"{_with_last_answerable(problem.message, capture, run, end)}"
        )
        field = problem.field
        if end_point and field == "model.name":  # the end point asked for lies beyond what maps
            field, message = "end_point", message + "; choose an earlier end_point"
        raise type(problem)(message, field=field)
    fields = _local_ancestors(capture, run, end)
    names = {f.name for f in fields}

    def resolve(layer: str, request_field: str) -> str:
        node = resolve_node(layer, request_field)
        if node not in names:
            raise InvalidSpec(
                f"layer {layer!r} (node {node!r}) is not on the way to the end point {end!r}; "
                f"choose a later end_point",
                field=request_field,
            )
        return node

    misaligned = [m for name in (f.name for f in fields) for m in run.misaligned.get(name, [])]
    context = run.values[end].global_context
    module = capture.node(context).module if context else ""
    return GraphField(
        fields, end, resolve, misaligned, context, capture.frontend, capture.final_stride, capture, module
    )


def _local_ancestors(capture: Capture, run: Analysis, end: str) -> list[LayerField]:
    by_name = {name: value.field for name, value in run.values.items() if value.field is not None}
    seen: set[str] = set()
    stack = [end]
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(by_name[name].inputs)
    return [by_name[n.name] for n in capture.nodes if n.name in seen]


def _default_end_point(capture: Capture, run: Analysis) -> str:
    """The last spatial feature map: the last node with a field that does not follow a global pooling, or a
    later 4-d node that could not be mapped (its problem is then raised: never stop early in silence)."""
    end = None
    for node in capture.nodes:
        value = run.values.get(node.name)
        mapped = value is not None and value.field is not None and not value.pooled
        if mapped or (node.name in run.problems and _spatial_problem(capture, run, node.name)):
            end = node.name
    if end is None:
        raise Unsupported("the model has no spatial feature map to analyse", field="model.name")
    if end in run.problems:
        problem = run.problems[end]
        raise type(problem)(_with_last_answerable(problem.message, capture, run, end), field=problem.field)
    return end


#: How a refusal names the last end point that can be answered.
LAST_ANSWERABLE = "the last end point that can be answered is"


def _with_last_answerable(message: str, capture: Capture, run: Analysis, name: str) -> str:
    """``message`` (a refusal at node ``name``) ending with the last end point before the node where the
    refusal arose whose field can be answered, unless it names one already."""
    if LAST_ANSWERABLE in message:
        return message
    stack, seen = list(capture.node(run.origins.get(name, name)).inputs), set()
    while stack:  # breadth first: the nearest mapped node on the way back to the image
        node = stack.pop(0)
        if node in seen:
            continue
        seen.add(node)
        value = run.values.get(node)
        if value is not None and value.field is not None and not value.pooled:
            module = capture.node(node).module
            where = f" (module {module!r})" if module else ""
            return f"{message}; {LAST_ANSWERABLE} {node!r}{where}: give it as end_point"
        stack.extend(capture.node(node).inputs)
    return f"{message}; no layer before it can be answered"


def _spatial_problem(capture: Capture, run: Analysis, name: str) -> bool:
    """A 4-d node without a field whose problem does not arise at the head's adaptive pooling."""
    shape = capture.node(name).shape
    origin = capture.node(run.origins.get(name, name))
    return shape is not None and len(shape) == 4 and not isinstance(origin.operation, AdaptivePool)


def _resolver(capture: Capture, run: Analysis) -> Callable[[str, str], str]:
    nodes = capture.nodes
    names = {n.name for n in nodes}
    resnet = capture.model.removeprefix("timm/").startswith("resnet")

    def resolve(name: str, request_field: str) -> str:
        if name in names:
            return name
        wanted = RESNET_STAGES.get(name, name) if resnet else name
        for candidates in (
            [n for n in nodes if n.module == wanted],
            [n for n in nodes if wanted in n.modules and n.name in run.values and run.values[n.name].field],
        ):
            if candidates:
                return candidates[-1].name
        hint = "; the stages conv1..conv5 are also accepted" if resnet else ""
        tops = f", or a top-level module ({', '.join(capture.top_modules)})" if capture.top_modules else ""
        raise InvalidSpec(
            f"no layer {name!r} in {capture.model}: use a node name from the response's layers"
            f"{', a module path' if capture.top_modules else ''}{tops}{hint}",
            field=request_field,
        )

    return resolve
