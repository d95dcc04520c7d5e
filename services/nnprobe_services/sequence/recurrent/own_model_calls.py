"""Calling the user's own recurrent model: the conventions a loaded module is run under, the seeded inputs,
and the translation of the model's own failures into ``FailedPrecondition`` naming ``model``.

Conventions (one sequence, run as a batch of one):

- a recurrent cell takes x_t of shape (1, I) (or one token id per step, shape (1,)) and its state(s), each
  (1, N_i): ``cell(x, h)`` for one state, ``cell(x, h, c)`` or ``cell(x, (h, c))`` for two (the form
  ``nn.LSTMCell`` is exported with); it returns the new state, or the new states (h, c) as a tuple;
- a sequence model takes x of shape (1, T, I) and returns y of shape (1, T, H), or a tuple whose first
  element is y (as ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` with ``batch_first=True`` return).

A model exported with a fixed batch other than 1 (or a fixed T other than the request's) cannot run under
these conventions; that failure is reported as ``FailedPrecondition`` on ``model`` with the model's message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from nnprobe_services.errors import Cancelled, FailedPrecondition, ServiceError
from nnprobe_services.repository import calling
from nnprobe_services.repository.probing import training_mode_call

Result = TypeVar("Result")

#: Offset between the request's seed and the initial state's generator (the inputs use the seed itself).
STATE_SEED_OFFSET = 0x2545F4914F6CDD1D


def never() -> bool:
    """The stop signal of a call nobody stops."""
    return False


def random_inputs(steps: int, size: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """x_1..x_T as a (T, I) tensor of ``dtype`` from N(0, 1): ``torch.randn((T, I), generator=g,
    dtype=torch.float64)`` with ``g = torch.Generator().manual_seed(seed)``, then cast."""
    generator = torch.Generator().manual_seed(seed % 2**64)
    return torch.randn(steps, size, generator=generator, dtype=torch.float64).to(dtype)


def random_states(sizes: Sequence[int], seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Initial states (N_i,) from N(0, 1), drawn one after another from one generator seeded with
    ``seed + STATE_SEED_OFFSET`` (mod 2^64)."""
    generator = torch.Generator().manual_seed((seed + STATE_SEED_OFFSET) % 2**64)
    return tuple(torch.randn(n, generator=generator, dtype=torch.float64).to(dtype) for n in sizes)


def on_device(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` (changed in place) on ``device``: its parameters and buffers, and for a graph every node
    that names a device (``torch.export`` records ``aten.zeros(..., device=cpu)`` for the initial state of
    ``nn.LSTM`` / ``nn.GRU``) and the tensor constants it holds as plain attributes, so a model exported on
    one device runs on the server's."""
    module.to(device)
    for sub in module.modules():
        for name, value in list(vars(sub).items()):
            if isinstance(value, torch.Tensor) and value.device != device:
                setattr(sub, name, value.to(device))
    graph = getattr(module, "graph", None)
    if graph is None:
        return module
    changed = False
    for node in graph.nodes:
        named = node.kwargs.get("device")
        if isinstance(named, torch.device | str) and torch.device(named) != device:
            node.kwargs = {**node.kwargs, "device": device}
            changed = True
    if changed:
        module.recompile()  # type: ignore[operator]
    return module


def guarded(what: str, call: Callable[[], Result]) -> Result:
    """``call()``; any failure of the model itself becomes ``FailedPrecondition`` on ``model`` saying
    ``what`` was attempted (domain errors and cancellations pass through)."""
    try:
        return call()
    except (ServiceError, Cancelled):
        raise
    except Exception as error:  # the user's graph may fail in any way; report it, do not crash
        raise FailedPrecondition(f"{what} failed: {type(error).__name__}: {error}", field="model") from error


def check_finite(values: Sequence[torch.Tensor], what: str) -> None:
    """Refuse (``FailedPrecondition`` on ``model``) a model whose ``what`` holds NaN or Inf: its gradient
    flow has no meaning there, and the inputs it was given are finite."""
    if not all(bool(torch.isfinite(v).all()) for v in values):
        raise FailedPrecondition(
            f"{what} holds NaN or Inf although the inputs are finite; check the model (a log, division or "
            "overflow in its graph) or analyse it in float64",
            field="model",
        )


def check_inference_graph(module: torch.nn.Module) -> None:
    """Refuse (``FailedPrecondition`` on ``model``) a graph exported in training mode: a batch norm that
    normalises over the batch (here one sequence, so its output is zero) or a dropout that is on. Modules
    without a graph pass."""
    name = training_mode_call(module)  # refused at upload too; this guards folders placed by hand
    if name is not None:
        raise FailedPrecondition(
            f"was exported in training mode ({name} with training=True: it would normalise over or "
            "drop units of the one sequence analysed); call model.eval() before torch.export.export "
            "and upload it again",
            field="model",
        )


def check_repeatable(first: Sequence[torch.Tensor], again: Sequence[torch.Tensor], what: str) -> None:
    """Refuse (``FailedPrecondition`` on ``model``) a model that answered the same call with different
    values: dropout or other randomness left in its graph (an export made in training mode)."""
    if not all(
        torch.allclose(a, b, rtol=1e-6, atol=1e-12, equal_nan=True) for a, b in zip(first, again, strict=True)
    ):
        raise FailedPrecondition(
            f"{what} gave different outputs for the same input (dropout or other randomness in its graph); "
            "call model.eval() before torch.export.export and upload it again",
            field="model",
        )


class CellCaller:
    """Runs a cell on flat states: ``step(x (I,), states (N_i,)...) -> new states (N_i,)...``.

    A loaded model (a graph with an exported input structure, or onnx2torch's flat inputs) is called with
    ``repository.calling.call_flat(module, [x, *states])``, which rebuilds ``(x, (h, c))`` where the program
    was exported so. Any other module is called ``cell(x, *states)`` or, when it refuses two flat states,
    ``cell(x, (h, c))`` (decided on the first call). The outputs must be states of the declared sizes.
    """

    def __init__(self, module: torch.nn.Module, sizes: Sequence[int]) -> None:
        self.module = module
        self.sizes = tuple(sizes)
        self.graph = calling.input_count(module) is not None
        self.nested: bool | None = None

    def step(self, x: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = [x.reshape(1, *x.shape), *(s.reshape(1, -1) for s in states)]
        if self.graph:
            return self._outputs(calling.call_flat(self.module, batch))
        if self.nested is None:
            return self._first(batch)
        args = (batch[0], tuple(batch[1:])) if self.nested else tuple(batch)
        return self._outputs(self.module(*args))

    def _first(self, batch: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        try:
            out = self.module(*batch)
            self.nested = False
        except Exception:
            if len(batch) == 2:
                raise
            out = self.module(batch[0], tuple(batch[1:]))
            self.nested = True
        return self._outputs(out)

    def _outputs(self, out: object) -> tuple[torch.Tensor, ...]:
        values = tuple(out) if isinstance(out, tuple | list) else (out,)
        if len(values) != len(self.sizes) or not all(isinstance(v, torch.Tensor) for v in values):
            raise FailedPrecondition(
                f"a cell with {len(self.sizes)} state(s) must return {len(self.sizes)} tensor(s), "
                f"got {_describe(out)}",
                field="model",
            )
        flat = []
        for i, (value, size) in enumerate(zip(values, self.sizes, strict=True)):
            if value.numel() != size:
                raise FailedPrecondition(
                    f"state {i} of the cell's output has shape {list(value.shape)}; expected (1, {size})",
                    field="model",
                )
            flat.append(value.reshape(-1))
        return tuple(flat)


def sequence_output(out: object, steps: int) -> torch.Tensor:
    """y (1, T, H) from a sequence model's output (a tensor, or a tuple whose first element is y)."""
    value = out[0] if isinstance(out, tuple | list) and out else out
    if not isinstance(value, torch.Tensor) or value.dim() != 3 or tuple(value.shape[:2]) != (1, steps):
        shape = list(value.shape) if isinstance(value, torch.Tensor) else _describe(out)
        raise FailedPrecondition(
            f"a sequence model must return y of shape (1, T={steps}, H) for x of shape (1, T, I), "
            f"got {shape}",
            field="model",
        )
    return value


def _describe(out: object) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {list(out.shape)}"
    if isinstance(out, tuple | list):
        return f"a {type(out).__name__} of {len(out)}"
    return type(out).__name__
