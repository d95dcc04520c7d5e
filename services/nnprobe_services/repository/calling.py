"""Calling a loaded repository model with a flat list of tensors and reading its outputs as a flat tuple.

A ``torch.export`` program keeps the structure of the inputs it was exported with (``nn.LSTMCell`` takes
``(x, (h, c))``, a hand-written cell ``(x, h, c)``); an onnx2torch module takes the ONNX graph's inputs in
order. ``call_flat`` hides the difference: the tensors are given in the order the structure flattens to
(``x, h, c`` for both), and the outputs come back flattened the same way (``(h, c)`` for an LSTM cell, a
1-tuple for a module returning one tensor).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils import _pytree as pytree


def input_count(module: torch.nn.Module) -> int | None:
    """How many tensors ``module`` takes flattened: its graph's placeholders (None: not a graph module)."""
    graph = getattr(module, "graph", None)
    if graph is None:
        return None
    return sum(1 for node in graph.nodes if node.op == "placeholder")


def exported_shapes(module: torch.nn.Module) -> list[tuple[int | None, ...]] | None:
    """The shape each flat input of an exported program was exported for (None for a dynamic dimension), or
    None when the module does not record them (onnx2torch modules, plain modules)."""
    graph = getattr(module, "graph", None)
    if graph is None:
        return None
    shapes: list[tuple[int | None, ...]] = []
    for node in graph.nodes:
        if node.op != "placeholder":
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            return None
        shapes.append(tuple(d if isinstance(d, int) else None for d in value.shape))
    return shapes


def _in_spec(module: torch.nn.Module) -> pytree.TreeSpec | None:
    codegen = getattr(getattr(module, "graph", None), "_codegen", None)
    info = getattr(codegen, "pytree_info", None)
    return getattr(info, "in_spec", None)


def call_flat(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``module`` applied to ``inputs`` given flat, in the order its exported input structure flattens to;
    every tensor of the result, flattened (tuples, lists and dicts of tensors in pytree order).

    Raises ``TypeError`` or ``ValueError`` when the number of inputs does not match the module's, and
    whatever the module raises for inputs of shapes it cannot take."""
    spec = _in_spec(module)
    if spec is not None:
        if spec.num_leaves != len(inputs):
            raise ValueError(f"the model takes {spec.num_leaves} tensors, got {len(inputs)}")
        args, kwargs = pytree.tree_unflatten(list(inputs), spec)
        result = module(*args, **kwargs)
    else:
        result = module(*inputs)
    leaves, _ = pytree.tree_flatten(result)
    return tuple(leaves)
