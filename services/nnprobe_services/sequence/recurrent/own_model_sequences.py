"""Gradient flow of the user's own sequence model ((1, T, I) -> (1, T, H)): how strongly the last output y_T
depends on each input step x_k, k = 1..T.

Two quantities, both exact (reverse-mode autograd through the model's own graph):

- |dy_T/dx_k|_2, the spectral norm of the H x I block of the Jacobian of the last output y_T (H,) with
  respect to the input step x_k (I,): the full Jacobian dy_T/dx (H x T x I) is built row by row, one
  backward pass per output unit, and cut into its T blocks;
- |dL/dx_k|_2 (Euclidean norm) for the loss L = sum(y_T) = sum_i y_T[i], by one more backward pass.

With token ids the model must start with an embedding: the gradient is then taken with respect to the
embedding's output e_k (D,) instead of x_k (the ids are not differentiable). The embedding is the first
node in graph order that is ``aten.embedding`` / ``torch.nn.functional.embedding`` / a call of an
``nn.Embedding`` submodule (a ``torch.fx.GraphModule``, as ``torch.export`` and onnx2torch give), or the
first ``nn.Embedding`` submodule of any other module; an ONNX ``Gather`` (which onnx2torch keeps as its own
module) is not recognised and token ids are then refused with ``FailedPrecondition``.

The growth rate and regime fit log |dy_T/dx_k| against the distance T - k (``gradients.growth_rate`` and
``gradients.regime``, as the built-in analysis). Source: Pascanu, Mikolov, Bengio, "On the difficulty of
training recurrent neural networks", ICML 2013 (section 2: dL/dx_k through the products of Jacobians).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch
from torch import fx

from nnprobe_services.errors import Cancelled, FailedPrecondition, InvalidArgument, ResourceExhausted
from nnprobe_services.sequence.recurrent import gradients
from nnprobe_services.sequence.recurrent.own_model_calls import (
    check_finite,
    check_repeatable,
    guarded,
    never,
    sequence_output,
)

#: Largest output width H: the Jacobian takes one backward pass per output unit.
MAX_OUTPUT_WIDTH = 1024
#: Longest sequence a model is analysed over.
MAX_STEPS = 10_000
#: Calls that look a table up by index, as the first node of a model fed token ids.
EMBEDDING_CALLS = (torch.ops.aten.embedding.default, torch.nn.functional.embedding, torch.embedding)


@dataclass
class SequenceGradients:
    """The gradient flow of one sequence model; lists are indexed by k = 1..T (position k - 1)."""

    #: T - k for k = 1..T: T - 1, ..., 0.
    distances: list[int]
    #: |dy_T/dx_k|_2, the spectral norm of each H x I (or H x D) Jacobian block.
    output_norms: list[float]
    #: |dL/dx_k|_2 with L = sum(y_T).
    loss_gradient_norms: list[float]
    #: L = sum(y_T).
    loss: float
    growth_rate: float
    regime: str
    #: ``inputs`` (x_k) or ``embedding`` (the embedding's output e_k, for token ids).
    measured: str
    #: H, the width of y_T.
    output_size: int


def check_steps(steps: int, field: str) -> None:
    """Refuse T outside 2..MAX_STEPS (one step has no distance to fit a rate over)."""
    if steps < 2:
        raise InvalidArgument(f"needs T >= 2 steps for a sequence model, got {steps}", field=field)
    if steps > MAX_STEPS:
        raise ResourceExhausted(f"T = {steps} exceeds the limit {MAX_STEPS}", field=field)


def analyze_inputs(
    module: torch.nn.Module,
    inputs: torch.Tensor,
    *,
    regime_tolerance: float = 0.01,
    max_elements: int = 1 << 28,
    should_stop: Callable[[], bool] = never,
) -> Generator[gradients.Progress, None, SequenceGradients]:
    """Analyse ``module`` on the float sequence ``inputs`` (T, I), run as x of shape (1, T, I). Yields
    ``Progress`` after each output unit differentiated (done 1..H of H); returns the ``SequenceGradients``
    (measured: inputs). ``max_elements`` bounds the Jacobian's H * T * I entries.

    Raises ``FailedPrecondition`` on ``model`` when the model cannot run on x or returns no (1, T, H) y;
    ``ResourceExhausted`` on ``model`` when H or the Jacobian exceeds its limit."""
    steps = inputs.shape[0]
    check_steps(steps, "inputs")

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        x = inputs.detach().reshape(1, steps, -1).clone().requires_grad_(True)
        with torch.enable_grad():
            return x, sequence_output(module(x), steps)

    leaf, y = guarded("running the model on x of shape (1, T, I)", forward)
    _check_output(y, guarded("running the model again", forward)[1])
    return (yield from _flow(leaf, y, "inputs", regime_tolerance, max_elements, should_stop))


def analyze_tokens(
    module: torch.nn.Module,
    tokens: torch.Tensor,
    *,
    regime_tolerance: float = 0.01,
    max_elements: int = 1 << 28,
    should_stop: Callable[[], bool] = never,
) -> Generator[gradients.Progress, None, SequenceGradients]:
    """Analyse ``module`` on token ids ``tokens`` (T,) int64, run as (1, T), with respect to its first
    embedding's output e (1, T, D). Yields as ``analyze_inputs``; returns measured: embedding.

    Raises ``FailedPrecondition`` on ``model`` when no embedding is found, ``InvalidArgument`` on
    ``token_ids`` for an id outside the embedding table."""
    steps = tokens.shape[0]
    check_steps(steps, "token_ids")
    tap = EmbeddingTap.of(module)
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or (tap.vocabulary is not None and high >= tap.vocabulary):
        rows = "0.." if tap.vocabulary is None else f"0..{tap.vocabulary - 1}"
        raise InvalidArgument(
            f"ids must lie in {rows} (the embedding's rows), got {low}..{high}", field="token_ids"
        )
    leaf, out = guarded(
        "running the model on token ids of shape (1, T)", lambda: tap.run(tokens.reshape(1, -1))
    )
    y = sequence_output(out, steps)
    again = guarded("running the model again", lambda: tap.run(tokens.reshape(1, -1)))[1]
    _check_output(y, sequence_output(again, steps))
    return (yield from _flow(leaf, y, "embedding", regime_tolerance, max_elements, should_stop))


def _flow(
    leaf: torch.Tensor,
    y: torch.Tensor,
    measured: str,
    tolerance: float,
    max_elements: int,
    should_stop: Callable[[], bool],
) -> Generator[gradients.Progress, None, SequenceGradients]:
    """The Jacobian blocks of y_T (H,) w.r.t. each step of ``leaf`` (1, T, D), row by row, then dL/dleaf."""
    last = y[0, -1]
    width, steps = last.shape[0], leaf.shape[1]
    if width > MAX_OUTPUT_WIDTH:
        raise ResourceExhausted(
            f"the output width H = {width} exceeds the limit {MAX_OUTPUT_WIDTH} of gradient analysis",
            field="model",
        )
    if width * leaf.numel() > max_elements:
        raise ResourceExhausted(
            f"the Jacobian of y_T has H * T * I = {width * leaf.numel()} entries, more than the limit "
            f"{max_elements}; send a shorter sequence",
            field="model",
        )
    rows = torch.zeros(width, steps, leaf.shape[2], dtype=leaf.dtype, device=leaf.device)
    for i in range(width):
        if should_stop():
            raise Cancelled(f"stopped after {i} of {width} Jacobian rows", done=i)
        rows[i] = _gradient(last[i], leaf, retain=True)[0]
        yield gradients.Progress(i + 1, width, "jacobian rows")
    loss = last.sum()
    grad = _gradient(loss, leaf, retain=False)[0]
    check_finite([rows, grad], "the Jacobian of y_T")
    log_norms = [gradients._log_norm(block, 0) for block in rows.permute(1, 0, 2)]
    distances = [steps - k for k in range(1, steps + 1)]
    rate = _growth_rate(distances, log_norms)
    return SequenceGradients(
        distances=distances,
        output_norms=[gradients._exp(v) for v in log_norms],
        loss_gradient_norms=torch.linalg.vector_norm(grad, dim=1).tolist(),
        loss=float(loss.detach()),
        growth_rate=rate,
        regime=gradients.regime(rate, log_norms, tolerance),
        measured=measured,
        output_size=width,
    )


def _check_output(y: torch.Tensor, again: torch.Tensor) -> None:
    """Refuse y with NaN or Inf, or a second run on the same input that differs (dropout left on)."""
    check_finite([y.detach()], "the model's output y")
    check_repeatable([y.detach()], [again.detach()], "the model")


def _growth_rate(distances: list[int], log_norms: list[float]) -> float:
    """``gradients.growth_rate`` of the norms; 0 when no earlier step reaches y_T (every norm at a distance
    > 0 is exactly zero: a model without recurrence), where only distance 0 is left to fit."""
    if not any(math.isfinite(v) for d, v in zip(distances, log_norms, strict=True) if d > 0):
        return 0.0
    return gradients.growth_rate(distances, log_norms)


def _gradient(output: torch.Tensor, leaf: torch.Tensor, *, retain: bool) -> torch.Tensor:
    """d output / d leaf, zeros where the output does not depend on the leaf."""
    if not output.requires_grad:
        return torch.zeros_like(leaf)

    def backward() -> torch.Tensor:
        (grad,) = torch.autograd.grad(output, leaf, retain_graph=retain, allow_unused=True)
        return torch.zeros_like(leaf) if grad is None else grad

    return guarded("differentiating the model", backward)


class EmbeddingTap:
    """Runs ``model`` on token ids and hands back its first embedding's output as a leaf that requires
    grad (the rest of the model computes from that leaf). The embedding is a graph ``node`` of a
    ``GraphModule`` or an ``nn.Embedding`` submodule; ``vocabulary``: the table's rows, when known."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        node: fx.Node | None = None,
        embedding: torch.nn.Embedding | None = None,
        vocabulary: int | None = None,
    ) -> None:
        self.model = model
        self.node = node
        self.embedding = embedding
        self.vocabulary = vocabulary

    @classmethod
    def of(cls, model: torch.nn.Module) -> EmbeddingTap:
        """The tap of ``model``'s first embedding; ``FailedPrecondition`` on ``model`` when it has none."""
        if isinstance(model, fx.GraphModule):
            for node in model.graph.nodes:
                table = _table(model, node)
                if table is not False:
                    rows = int(table.shape[0]) if isinstance(table, torch.Tensor) else None
                    return cls(model, node=node, vocabulary=rows)
        else:
            for sub in model.modules():
                if isinstance(sub, torch.nn.Embedding):
                    return cls(model, embedding=sub, vocabulary=sub.num_embeddings)
        raise FailedPrecondition(
            "token ids need a model that starts with an embedding (aten.embedding, "
            "torch.nn.functional.embedding or an nn.Embedding submodule) and none was found; send the "
            "embedded sequence as a float tensor in `inputs` instead",
            field="model",
        )

    def run(self, tokens: torch.Tensor) -> tuple[torch.Tensor, object]:
        """(e, model output) for ``tokens`` (1, T); e is the leaf the output is computed from."""
        captured: list[torch.Tensor] = []

        def tap(value: torch.Tensor) -> torch.Tensor:
            if captured:  # the first lookup only
                return value
            leaf = value.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf

        with torch.enable_grad():
            if self.embedding is not None:
                handle = self.embedding.register_forward_hook(lambda _m, _i, out: tap(out))
                try:
                    out = self.model(tokens)
                finally:
                    handle.remove()
            else:
                assert isinstance(self.model, fx.GraphModule) and self.node is not None
                out = _Interpreter(self.model, self.node, tap).run(tokens)
        return captured[0], out


class _Interpreter(fx.Interpreter):
    """Runs a graph node by node, passing ``node``'s value through ``tap``."""

    def __init__(self, module: fx.GraphModule, node: fx.Node, tap: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(module)
        self.node, self.tap = node, tap

    def run_node(self, n: fx.Node) -> object:
        value = super().run_node(n)
        return self.tap(value) if n is self.node else value


def _table(module: fx.GraphModule, node: fx.Node) -> torch.Tensor | bool | None:
    """The embedding table ``node`` looks up (None when it is not a constant), or False when ``node`` is
    no embedding lookup."""
    if node.op == "call_module":
        sub = module.get_submodule(str(node.target))
        return sub.weight if isinstance(sub, torch.nn.Embedding) else False
    if node.op != "call_function" or node.target not in EMBEDDING_CALLS:
        return False
    if node.target is not torch.nn.functional.embedding:  # aten.embedding, torch.embedding: table first
        weight = node.args[0]
    else:
        weight = node.kwargs.get("weight", node.args[1] if len(node.args) > 1 else None)
    if isinstance(weight, fx.Node) and weight.op == "get_attr":
        value = _attribute(module, str(weight.target))
        return value if isinstance(value, torch.Tensor) else None
    return None


def _attribute(module: torch.nn.Module, path: str) -> object:
    value: object = module
    for part in path.split("."):
        value = getattr(value, part)
    return value
