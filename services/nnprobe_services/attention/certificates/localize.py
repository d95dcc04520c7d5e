"""Where a symmetry breaks: the first node of the graph whose output stops commuting with the permutation.

The float64 graph is run node by node (``torch.fx.Interpreter``) on X and on PX. Nodes that do not depend
on the input (weights, a positional-embedding parameter, constants) are the same in both runs and are
skipped. The output of a node that depends on the input *commutes* with P when its value under PX equals,
within the tolerance, its value under X

- permuted along its token axes: every axis of length T (the input's axis 1, or the same axis moved by a
  transpose; one axis, or two for a T x T score matrix), or an axis of length k*T that merges the token axis
  with another one ((B*T, D) or (T*B, D) in either order); or
- unchanged (an invariant value: a pooled vector, a shape), except for a value laid out with tokens:
  three or more dimensions with T on axis 1, on axis 0 (sequence-first, when T != B) or on the last two
  axes (scores). Such a value must move with the tokens: so ``x + positions`` breaks at the ``add`` even
  when the tokens of ``x`` happen to coincide (after attention has averaged them), while a pooled (B, D)
  or (B, 1, D) with D = T or B = T is not mistaken for a token axis.

Walking the nodes in graph order, the first node that does not commute while every tensor it reads does is
reported (a node downstream of a broken one is not first). The node that produces the model's output is
held to the declared action itself: equivariance (permuted along axis 1) or invariance (unchanged).

Tolerance of a node: ``tolerance * max(1, max |value(X)|)``, with ``tolerance`` 1e-9 for float64 values
(the graph's arithmetic: its rounding is ~1e-15 relative), 1e-4 for float32 values (graphs that cast
inside) and 0 for integer and boolean values.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from nnprobe_services.attention.certificates.noise import guarded

#: Relative tolerance of a float64 node output.
FLOAT64_TOLERANCE = 1e-9
#: Relative tolerance of a float32 node output (a cast inside the graph).
FLOAT32_TOLERANCE = 1e-4
ACTIONS = ("equivariance", "invariance")

Permuter = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BreakingNode:
    """The first node whose output stops commuting with the permutation.

    ``name``: the node's name in the graph (``add``); ``op``: its kind (``call_function``...);
    ``target``: what it computes (``aten.add.Tensor``, ``getitem``, ``Add (OnnxBinaryMathOperation)``);
    ``deviation``: max-norm distance of its output under PX from the nearest commuting answer, float64;
    ``tolerance``: the absolute tolerance it exceeded; ``shape``: its output's shape.
    """

    name: str
    op: str
    target: str
    deviation: float
    tolerance: float
    shape: list[int]


def describe_target(graph: torch.fx.GraphModule, node: torch.fx.Node) -> str:
    """A readable name of what ``node`` computes."""
    if node.op == "call_module":
        module = graph.get_submodule(str(node.target))
        return f"{node.target} ({type(module).__name__})"
    target = node.target
    if isinstance(target, str):
        return target
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def _tolerance(value: torch.Tensor, relative: float) -> float:
    if value.dtype == torch.float64:
        rel = relative
    elif value.is_floating_point():
        rel = max(relative, FLOAT32_TOLERANCE)
    else:
        return 0.0
    return rel * max(1.0, float(value.abs().max()) if value.numel() else 1.0)


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())


def _permute_axis(axis: int, perm: torch.Tensor, split: tuple[int, int] | None) -> Permuter:
    """Permute ``axis`` by ``perm``; with ``split`` (outer, inner) the axis is viewed as (outer, inner)
    and the part of length T (the one equal to len(perm)) is permuted."""

    def apply(v: torch.Tensor) -> torch.Tensor:
        if split is None:
            return v.index_select(axis, perm)
        outer, inner = split
        shaped = v.unflatten(axis, (outer, inner))
        token_axis = axis + 1 if inner == len(perm) else axis
        return shaped.index_select(token_axis, perm).flatten(axis, axis + 1)

    return apply


def _permute_two_axes(first: int, second: int, perm: torch.Tensor) -> Permuter:
    """Permute two axes of length T by the same ``perm`` (a T x T score matrix: P S P^T)."""

    def apply(v: torch.Tensor) -> torch.Tensor:
        return v.index_select(first, perm).index_select(second, perm)

    return apply


def _candidates(shape: torch.Size, perm: torch.Tensor) -> Iterator[Permuter]:
    """The ways a value of ``shape`` can carry the token axis (see the module docstring)."""
    t = len(perm)
    axes = [a for a, n in enumerate(shape) if n == t]
    singles = [_permute_axis(a, perm, None) for a in axes]
    yield from singles
    for first, second in itertools.combinations(axes, 2):
        yield _permute_two_axes(first, second, perm)
    for a, n in enumerate(shape):
        if n != t and n % t == 0:
            yield _permute_axis(a, perm, (n // t, t))
            yield _permute_axis(a, perm, (t, n // t))


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value.detach()]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def _laid_out_with_tokens(shape: torch.Size, b: int, t: int) -> bool:
    """Whether a value of ``shape`` holds tokens (see the module docstring), batch size ``b``."""
    if len(shape) < 3:
        return False
    return shape[1] == t or (shape[0] == t != b) or (len(shape) >= 4 and shape[-1] == shape[-2] == t)


def _off(
    plain: torch.Tensor,
    permuted: torch.Tensor,
    perm: torch.Tensor,
    declared: str | None,
    tol: float,
    batch: int,
) -> float:
    """The distance of ``permuted`` from the nearest commuting answer (the first one within ``tol``)."""
    if plain.shape != permuted.shape:
        return float("inf")
    if declared == "equivariance":
        if plain.ndim < 2 or plain.shape[1] != len(perm):
            return float("inf")
        return _distance(permuted, plain.index_select(1, perm))
    if declared == "invariance":
        return _distance(permuted, plain)
    tokens_must_move = _laid_out_with_tokens(plain.shape, batch, len(perm))
    best = float("inf") if tokens_must_move else _distance(permuted, plain)
    for candidate in _candidates(plain.shape, perm):
        if best <= tol:
            break
        best = min(best, _distance(permuted, candidate(plain)))
    return best


class _Recorder(torch.fx.Interpreter):
    """Runs the graph, keeping every node's value (the interpreter's environment is not emptied)."""

    def __init__(self, graph: torch.fx.GraphModule) -> None:
        super().__init__(graph, garbage_collect_values=False)


def _values(graph: torch.fx.GraphModule, x: torch.Tensor) -> dict[torch.fx.Node, Any]:
    recorder = _Recorder(graph)
    with torch.inference_mode():
        guarded(lambda: recorder.run(x))
    return recorder.env


def _output_producers(graph: torch.fx.GraphModule) -> set[torch.fx.Node]:
    output = next(n for n in graph.graph.nodes if n.op == "output")
    return set(output.all_input_nodes)


def first_breaking_node(
    graph: torch.fx.GraphModule,
    x: torch.Tensor,
    perm: list[int],
    *,
    action: str,
    tolerance: float = FLOAT64_TOLERANCE,
) -> BreakingNode | None:
    """The first node of ``graph`` (float64) whose output stops commuting with ``perm``.

    ``x``: the input (B, T, D) in the graph's precision; ``perm``: the permutation p, (PX)[:, i] = X[:, p[i]];
    ``action``: ``equivariance`` or ``invariance``, the action the output node is held to; ``tolerance``:
    relative, for float64 values. Returns None when every node commutes (then a float32 failure is an
    effect of float32 arithmetic alone). Every node's value of both runs is held in memory at once.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
    index = torch.tensor(perm, dtype=torch.long, device=x.device)
    plain = _values(graph, x)
    permuted = _values(graph, x.index_select(1, index))
    producers = _output_producers(graph)
    broken: set[torch.fx.Node] = set()
    depends: set[torch.fx.Node] = set()
    for node in graph.graph.nodes:
        if node.op == "placeholder" or any(source in depends for source in node.all_input_nodes):
            depends.add(node)
        if node.op == "output" or node not in depends:
            continue
        a, b = _tensors(plain.get(node)), _tensors(permuted.get(node))
        declared = action if node in producers else None
        tols = [_tolerance(u, tolerance) for u in a]
        offs = [_off(u, v, index, declared, tol, x.shape[0]) for u, v, tol in zip(a, b, tols, strict=True)]
        failing = [(off, tol, u) for off, tol, u in zip(offs, tols, a, strict=True) if off > tol]
        if not failing:
            continue
        broken.add(node)
        if any(source in broken for source in node.all_input_nodes):
            continue
        off, tol, value = failing[0]
        return BreakingNode(
            name=node.name,
            op=node.op,
            target=describe_target(graph, node),
            deviation=off,
            tolerance=tol,
            shape=list(value.shape),
        )
    return None
