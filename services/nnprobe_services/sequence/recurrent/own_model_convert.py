"""AnalyzeGradients with a repository ``model`` between protobuf and plain values: the request read into
``own_model_workflow.ModelGradientRun`` (the model resolved and loaded, inputs given or drawn, limits
checked, every error naming its request field), and the result written as ``GradientAnalysis.model_flow``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.sequence.v1 import sequence_pb2 as pb

from nnprobe_services import validation as valid
from nnprobe_services.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from nnprobe_services.sequence.recurrent import gradients, own_model_cells, own_model_sequences
from nnprobe_services.sequence.recurrent.convert import REGIMES, TORCH_DTYPES, progress
from nnprobe_services.sequence.recurrent.own_model_calls import random_inputs, random_states
from nnprobe_services.sequence.recurrent.own_model_workflow import (
    CELL_TASK,
    TASKS,
    ModelGradientResult,
    ModelGradientRun,
)

#: Request fields of the built cells, which a request naming a ``model`` leaves unset.
BUILT_CELL_FIELDS = (
    "cells",
    "spectral_radii",
    "weights",
    "hidden_size",
    "input_size",
    "init",
    "init_scale",
    "forget_bias",
    "input_scale",
    "plot",
)
MEASURED = {
    "state": pb.MEASURED_GRADIENT_STATE,
    "inputs": pb.MEASURED_GRADIENT_INPUTS,
    "embedding": pb.MEASURED_GRADIENT_EMBEDDING,
}


@dataclass
class ResolvedModel:
    """A repository model loaded for analysis: its name, version, task, the module (in the requested
    dtype, on the device), its input width I (0 when it takes token ids) and, for a cell, the widths of its
    states (h, or h and c)."""

    name: str
    version: int
    task: str
    module: torch.nn.Module
    input_size: int
    state_sizes: tuple[int, ...] = ()
    #: The vocabulary V of a model that takes token ids (then ``input_size`` is 0).
    vocabulary: int | None = None
    #: T of a sequence model exported for one length; None when any T goes.
    sequence_length: int | None = None


#: (name, version (0: latest), dtype) -> the loaded model; raises ``NotFound`` on ``model`` /
#: ``model_version`` for an unknown name or version.
Resolve = Callable[[str, int, torch.dtype], ResolvedModel]


def read_model_gradients(
    request: pb.AnalyzeGradientsRequest, resolve: Resolve, device: torch.device, max_elements: int
) -> ModelGradientRun:
    """The run AnalyzeGradients asks for with ``request.model`` set. Raises ``InvalidArgument`` /
    ``ResourceExhausted`` naming the field at fault, ``NotFound`` (from ``resolve``) for an unknown model
    and ``FailedPrecondition`` on ``model`` for a task other than ``recurrent_cell`` / ``sequence_model``."""
    for name in BUILT_CELL_FIELDS:
        if _is_set(request, name):
            raise InvalidArgument("describes built cells; leave it unset when `model` is given", field=name)
    if request.input_distribution not in (pb.INPUT_DISTRIBUTION_UNSPECIFIED, pb.INPUT_DISTRIBUTION_NORMAL):
        raise InvalidArgument(
            "with `model` the drawn inputs are N(0, 1); send your own in `inputs`", field="input_distribution"
        )
    if request.model_version < 0:
        raise InvalidArgument(f"must be >= 0 (0: latest), got {request.model_version}", field="model_version")
    dtype = TORCH_DTYPES[valid.float_dtype(request.dtype, "dtype", common_pb2.DTYPE_FLOAT64)]
    tolerance = valid.tolerance(valid.optional(request, "regime_tolerance"), "regime_tolerance", 0.01)
    model = resolve(request.model, request.model_version, dtype)
    if model.task not in TASKS:
        raise FailedPrecondition(
            f"is a `{model.task}` model; AnalyzeGradients analyses tasks {list(TASKS)}", field="model"
        )
    inputs, tokens, field = _sequence(request, model, dtype, max_elements)
    steps = (inputs if inputs is not None else tokens).shape[0]  # type: ignore[union-attr]
    initial: tuple[torch.Tensor, ...] = ()
    if model.task == CELL_TASK:
        _check_cell_budget(model, steps, field, max_elements)
        sizes = model.state_sizes
        drawn = random_states(sizes, request.seed, dtype) if request.random_initial_state else None
        initial = drawn or tuple(torch.zeros(n, dtype=dtype) for n in sizes)
    else:
        own_model_sequences.check_steps(steps, field)
        if request.random_initial_state:
            raise InvalidArgument(
                "is for recurrent cells; a sequence model starts from its own state",
                field="random_initial_state",
            )
    return ModelGradientRun(
        name=model.name,
        version=model.version,
        task=model.task,
        module=model.module,
        input_size=model.input_size,
        state_sizes=model.state_sizes,
        inputs=None if inputs is None else inputs.to(device),
        tokens=None if tokens is None else tokens.to(device),
        initial=tuple(s.to(device) for s in initial),
        regime_tolerance=tolerance,
        max_elements=max_elements,
    )


def _is_set(request: pb.AnalyzeGradientsRequest, name: str) -> bool:
    if name == "input_scale":
        return request.HasField("input_scale")
    if name == "init_scale":
        return request.HasField("init_scale")
    return bool(getattr(request, name))


def _sequence(
    request: pb.AnalyzeGradientsRequest, model: ResolvedModel, dtype: torch.dtype, max_elements: int
) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    """(inputs (T, I) or None, token ids (T,) or None, the field T comes from)."""
    if request.token_ids and request.HasField("inputs"):
        raise InvalidArgument("give `inputs` or `token_ids`, not both", field="token_ids")
    if request.token_ids:
        if model.vocabulary is None:
            raise InvalidArgument(
                f"model {model.name!r} takes float inputs (T, {model.input_size}); send them in `inputs`",
                field="token_ids",
            )
        tokens = torch.tensor(list(request.token_ids), dtype=torch.int64)
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= model.vocabulary:
            raise InvalidArgument(
                f"ids must lie in 0..{model.vocabulary - 1} (the model's vocabulary), got {low}..{high}",
                field="token_ids",
            )
        _check_length(request, model, tokens.shape[0], "token_ids")
        return None, tokens, "token_ids"
    if request.HasField("inputs"):
        if model.vocabulary is not None:
            raise InvalidArgument(
                f"model {model.name!r} takes token ids (vocabulary {model.vocabulary}); send `token_ids`",
                field="inputs",
            )
        x = _float_inputs(request, model, dtype, max_elements)
        _check_length(request, model, x.shape[0], "inputs")
        return x, None, "inputs"
    steps = request.sequence_length or model.sequence_length or 0
    steps = valid.positive(steps, "sequence_length", maximum=own_model_cells.MAX_STEPS)
    _check_length(request, model, steps, "sequence_length")
    generator = torch.Generator().manual_seed(request.seed % 2**64)
    if model.vocabulary is not None:
        return None, torch.randint(model.vocabulary, (steps,), generator=generator), "sequence_length"
    if steps * model.input_size > max_elements:
        raise ResourceExhausted(
            f"T * I = {steps * model.input_size} input elements exceed the limit {max_elements}",
            field="sequence_length",
        )
    return random_inputs(steps, model.input_size, request.seed, dtype), None, "sequence_length"


def _float_inputs(
    request: pb.AnalyzeGradientsRequest, model: ResolvedModel, dtype: torch.dtype, max_elements: int
) -> torch.Tensor:
    """``inputs`` as a finite (T, I) tensor of ``dtype``."""
    array = valid.tensor(request.inputs, "inputs", max_elements=max_elements, ndim=2)
    if array.dtype.kind != "f":
        raise InvalidArgument(f"must be float32 or float64, not {array.dtype}", field="inputs")
    if array.shape[1] != model.input_size:
        raise InvalidArgument(
            f"must have shape (T, {model.input_size}) (I, the model's input width), got {list(array.shape)}",
            field="inputs",
        )
    x = torch.from_numpy(array).to(dtype)
    if not bool(torch.isfinite(x).all()):
        raise InvalidArgument(f"must be finite in {dtype}", field="inputs")
    return x


def _check_length(request: pb.AnalyzeGradientsRequest, model: ResolvedModel, steps: int, field: str) -> None:
    if steps == 0:
        raise InvalidArgument("is empty: give at least one step", field=field)
    if field != "sequence_length" and request.sequence_length and request.sequence_length != steps:
        raise InvalidArgument(
            f"is {request.sequence_length} but `{field}` has T = {steps}; leave it 0", field="sequence_length"
        )
    if model.sequence_length is not None and steps != model.sequence_length:
        raise InvalidArgument(
            f"has T = {steps}, but model {model.name!r} was exported for T = {model.sequence_length} "
            "(its config's sequence_length)",
            field=field,
        )


def _check_cell_budget(model: ResolvedModel, steps: int, field: str, max_elements: int) -> None:
    cell = own_model_cells.OwnCell(model.module, model.input_size, model.state_sizes)
    own_model_cells.check_cell(cell, steps, field)
    width = sum(model.state_sizes)
    if steps * width * width > max_elements:
        raise ResourceExhausted(
            f"T * S^2 = {steps * width * width} (S = joint state width {width}) exceeds the limit "
            f"{max_elements}",
            field=field,
        )


# -- replies ---------------------------------------------------------------------------------------------
def model_gradients_reply(event: gradients.Progress | ModelGradientResult) -> pb.AnalyzeGradientsResponse:
    """A progress event, or the model's gradient flow."""
    if isinstance(event, gradients.Progress):
        return pb.AnalyzeGradientsResponse(progress=progress(event))
    run, flow = event.run, event.flow
    message = pb.ModelGradientFlow(
        model=run.name,
        model_version=run.version,
        task=run.task,
        distances=flow.distances,
        growth_rate=flow.growth_rate,
        regime=REGIMES[flow.regime],
    )
    if isinstance(flow, own_model_cells.CellGradients):
        message.measured = MEASURED["state"]
        message.jacobian_norms.extend(flow.hidden_norms)
        message.cell_state_norms.extend(flow.cell_norms)
        message.step_norms.extend(flow.step_norms)
        if flow.cell_regime:
            message.cell_growth_rate = flow.cell_growth_rate
            message.cell_regime = REGIMES[flow.cell_regime]
        hidden = run.state_sizes[0]
    else:
        message.measured = MEASURED[flow.measured]
        message.jacobian_norms.extend(flow.output_norms)
        message.loss_gradient_norms.extend(flow.loss_gradient_norms)
        message.loss = flow.loss
        hidden = flow.output_size
    result = pb.GradientAnalysis(
        sequence_length=run.steps,
        hidden_size=hidden,
        input_size=run.input_size,
        regime_tolerance=run.regime_tolerance,
        seconds=event.seconds,
        model_flow=message,
    )
    return pb.AnalyzeGradientsResponse(result=result)
