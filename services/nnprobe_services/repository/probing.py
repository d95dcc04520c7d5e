"""The upload check of a recurrent or token model: run it once on probe inputs of the shapes its config
declares and compare what it returns with what its task must return, so a model that would fail every later
analysis is refused at upload, naming the config and the shapes expected and got.

What each task takes and returns (B and T from ``TaskConfig.batch``/``length``; inputs given flat, see
``calling``):

* ``recurrent_cell``: ``x_t`` (B, I) (token ids (B,) with ``vocabulary``) and ``states`` tensors (B, H) ->
  ``states`` tensors (B, H) (h, or h and c);
* ``sequence_model``: (B, T, I) (token ids (B, T)) -> (B, T, H) as its first output;
* ``token_model``: (B, T, D) (token ids (B, T)) -> (B, T, D), or (B, D) when ``pooled``, as its first output.
"""

from __future__ import annotations

import torch

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository.calling import call_flat, exported_shapes
from nnprobe_services.repository.quoting import cap
from nnprobe_services.repository.tasks import CELL, SEQUENCE, TaskConfig


def _shape(shape: tuple[int | None, ...] | torch.Size) -> str:
    """``(2, 5)``; a dynamic dimension (None) is ``any``."""
    text = ", ".join("any" if n is None else str(n) for n in shape)
    return f"({text}{',' if len(shape) == 1 else ''})"


def _exported(module: torch.nn.Module) -> str:
    """``; the archive was exported for (any, 3), (any, 5)`` when the module records it, else ""."""
    shapes = exported_shapes(module)
    return f"; the archive was exported for {', '.join(_shape(s) for s in shapes)}" if shapes else ""


def probe_inputs(config: TaskConfig, dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.Tensor]:
    """Inputs of the declared shapes, drawn from N(0, 1) (token ids uniform in the vocabulary) with
    ``seed``; the cell's states follow its ``x_t``."""
    generator = torch.Generator().manual_seed(seed)
    batch, length = config.batch, config.length
    lead = (batch,) if config.task == CELL else (batch, length)
    if config.vocabulary is not None:
        first = torch.randint(config.vocabulary, lead, generator=generator)
    else:
        width = config.input_size if config.input_size is not None else config.hidden_size
        first = torch.randn(*lead, width, generator=generator, dtype=dtype)
    states = [torch.randn(batch, n, generator=generator, dtype=dtype) for n in config.state_sizes]
    return [first, *states]


def expected(config: TaskConfig) -> str:
    """What a model of ``config`` must return, in words with B and T symbolic."""
    h = config.hidden_size
    if config.task == CELL:
        return (
            f"a recurrent_cell with hidden_size {h} and states 1 must return h (B, {h})"
            if config.states == 1
            else f"a recurrent_cell with hidden_size {h} and states 2 must return h and c, each (B, {h})"
        )
    if config.task == SEQUENCE:
        return f"a sequence_model with hidden_size {h} must return (B, T, {h})"
    if config.pooled:
        return f"a pooled token_model with d_model {h} must return one tensor (B, {h})"
    return f"a token_model with d_model {h} must return one tensor (B, T, {h}) or pooled (B, {h})"


def _matches(config: TaskConfig, outputs: tuple[torch.Tensor, ...]) -> bool:
    b, t, h = config.batch, config.length, config.hidden_size
    if config.task == CELL:
        return len(outputs) == config.states and all(tuple(o.shape) == (b, h) for o in outputs)
    if not outputs:
        return False
    if config.task == SEQUENCE:
        return tuple(outputs[0].shape) == (b, t, h)
    return len(outputs) == 1 and tuple(outputs[0].shape) == ((b, h) if config.pooled else (b, t, h))


#: Where ATen's training-sensitive operators take their ``training`` flag (positional argument index).
TRAINING_ARGUMENTS = {"batch_norm": 5, "dropout": 2}


def training_mode_call(module: torch.nn.Module) -> str | None:
    """The first operator of ``module``'s graph called with ``training=True`` (a batch norm that normalises
    over the batch, a dropout that is on): the mark of an export made without ``model.eval()``; None when
    there is none or the module has no graph."""
    graph = getattr(module, "graph", None)
    for node in graph.nodes if graph is not None else ():
        name = str(getattr(node.target, "__name__", node.target))
        for call, position in TRAINING_ARGUMENTS.items():
            if call in name and len(node.args) > position and node.args[position] is True:
                return name
    return None


def check(module: torch.nn.Module, config: TaskConfig, field: str = "metadata.config_yaml") -> None:
    """Run ``module`` once on ``probe_inputs(config)``; ``InvalidArgument`` naming ``field`` when it fails
    on them or returns other shapes than its task must (the message gives the shapes expected and got), and
    on ``file`` when its graph was exported in training mode (``training_mode_call``)."""
    training = training_mode_call(module)
    if training is not None:
        raise InvalidArgument(
            f"was exported in training mode ({training} with training=True: its answers would depend on the "
            "batch or on chance); call model.eval() before torch.export.export and upload it again",
            field="file",
        )
    inputs = probe_inputs(config, next((p.dtype for p in module.parameters()), torch.float32))
    given = ", ".join(_shape(x.shape) for x in inputs)
    try:
        with torch.no_grad():
            outputs = call_flat(module, inputs)
    except Exception as error:  # whatever the user's graph raises for these shapes
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise InvalidArgument(
            f"declares a {config.task} taking {given}, but the model fails on inputs of those shapes "
            f"({type(error).__name__}: {cap(first_line, 160)}){_exported(module)}; declare the "
            "sizes it takes (and any fixed batch_size/sequence_length), or export with dynamic dimensions",
            field=field,
        ) from None
    if not _matches(config, outputs):
        got = ", ".join(_shape(o.shape) for o in outputs) or "nothing"
        raise InvalidArgument(
            f"model returned {got} for inputs {given}, but {expected(config)} "
            f"(B = {config.batch}, T = {config.length})",
            field=field,
        )
