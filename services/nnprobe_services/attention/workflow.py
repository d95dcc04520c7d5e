"""The AttentionService checks as plain calls: validate the request's plain values into a plan (``plans``),
then run it. ``run_*`` builds the tensors of a plan on the device and runs its check in ``checks``
(PyTorch), polling ``should_stop``; a servicer calls the entry points (``equivariance``,
``pooling_invariance``, ``feed_forward``, and ``model_certificate`` for a repository token model) in
its compute pool.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.fx

from nnprobe_services.attention import checks
from nnprobe_services.attention.certificates import certify, noise
from nnprobe_services.attention.certificates.certify import Certificate
from nnprobe_services.attention.certificates.plans import (
    ModelCheckSpec,
    Resolve,
    TokenModel,
    plan_model_check,
)
from nnprobe_services.attention.plans import (
    AttentionSpec,
    FeedForwardPlan,
    FeedForwardSpec,
    Limits,
    PermutationOptions,
    PermutationPlan,
    plan_feed_forward,
    plan_permutation_check,
)
from nnprobe_services.errors import InvalidArgument, ShouldStop, never
from nnprobe_services.repository.task_models import TaskModels

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def equivariance(
    spec: AttentionSpec, options: PermutationOptions, limits: Limits, device: torch.device, stop: ShouldStop
) -> checks.PermutationCheck:
    """Plan and run a permutation-equivariance check (``run_equivariance``)."""
    plan = plan_permutation_check(spec, options, limits)
    return run_equivariance(plan, device, should_stop=stop)


def pooling_invariance(
    spec: AttentionSpec,
    options: PermutationOptions,
    pooling: str,
    limits: Limits,
    device: torch.device,
    stop: ShouldStop,
) -> checks.PermutationCheck:
    """Plan and run a pooling-invariance check (``run_pooling_invariance``)."""
    plan = plan_permutation_check(spec, options, limits)
    return run_pooling_invariance(plan, pooling, device, should_stop=stop)


def feed_forward(
    spec: FeedForwardSpec, limits: Limits, device: torch.device, stop: ShouldStop
) -> checks.FeedForwardCheck:
    """Plan and run the Linear-vs-Conv1d comparison (``run_feed_forward``)."""
    plan = plan_feed_forward(spec, limits)
    return run_feed_forward(plan, device, should_stop=stop)


def _layer_and_input(
    plan: PermutationPlan, device: torch.device
) -> tuple[checks.SelfAttention, torch.Tensor]:
    spec, dtype = plan.spec, TORCH_DTYPES[plan.spec.dtype]
    if spec.x is not None:
        x = _as_tensor(spec.x, dtype)
    else:
        x = checks.random_input(plan.t, plan.d, spec.seed, torch.float64).to(dtype)
    given = [_as_tensor(w, dtype) for w in spec.weights if w is not None]
    wq, wk, wv = (w.to(device) for w in given or checks.random_weights(plan.d, spec.seed, dtype))
    layer = checks.SelfAttention(
        wq,
        wk,
        wv,
        heads=plan.heads,
        scale=spec.scale,
        softmax=spec.softmax,
        positional=spec.positional,
        causal=spec.causal,
    )
    return layer, x.to(device)


def _as_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def _permutations(plan: PermutationPlan) -> torch.Tensor:
    if plan.exhaustive:
        return checks.exhaustive_permutations(plan.t)
    return checks.sampled_permutations(plan.t, plan.samples, plan.spec.seed)


def run_equivariance(
    plan: PermutationPlan, device: torch.device, *, should_stop: ShouldStop = never
) -> checks.PermutationCheck:
    """Is s(PX) == P s(X) for every permutation of the plan? ``reference`` is s(X), (T, D) in the plan's
    dtype. Raises ``Cancelled`` when ``should_stop`` answers true between chunks of permutations."""
    layer, x = _layer_and_input(plan, device)
    return checks.check_equivariance(
        x,
        layer,
        _permutations(plan),
        tolerance=plan.tolerance,
        exhaustive=plan.exhaustive,
        should_stop=should_stop,
    )


def run_pooling_invariance(
    plan: PermutationPlan, pooling: str, device: torch.device, *, should_stop: ShouldStop = never
) -> checks.PermutationCheck:
    """Is pool(s(PX)) == pool(s(X)) for every permutation of the plan (``pooling``: mean, sum, max,
    first_token)? ``reference`` is pool(s(X)), (D,). Raises ``InvalidArgument`` (field ``pooling``) for an
    unknown pooling and ``Cancelled`` when ``should_stop`` answers true."""
    if pooling not in checks.POOLINGS:
        raise InvalidArgument(f"must be one of {list(checks.POOLINGS)}, not {pooling!r}", field="pooling")
    layer, x = _layer_and_input(plan, device)
    return checks.check_pooling(
        x,
        layer,
        _permutations(plan),
        pooling,
        tolerance=plan.tolerance,
        exhaustive=plan.exhaustive,
        should_stop=should_stop,
    )


def run_feed_forward(
    plan: FeedForwardPlan, device: torch.device, *, should_stop: ShouldStop = never
) -> checks.FeedForwardCheck:
    """The Linear stack on (B, T, D) against the Conv1d stack on (B, D, T), same weights; the median time
    of each over the plan's repeats. ``output`` is (B, T, widths[-1]). Raises ``Cancelled`` when
    ``should_stop`` answers true before a timing repeat."""
    spec, dtype = plan.spec, TORCH_DTYPES[plan.spec.dtype]
    if spec.x is not None:
        x = _as_tensor(spec.x, dtype)
    else:
        x = checks.random_batch(*plan.batch, plan.widths[0], spec.seed, dtype)
    return checks.check_feed_forward(
        plan.widths,
        x.to(device),
        activation=spec.activation,
        seed=spec.seed,
        tolerance=plan.tolerance,
        repeats=plan.repeats,
        should_stop=should_stop,
    )


# -- a repository token model --------------------------------------------------------------------------
def model_certificate(
    spec: ModelCheckSpec, resolve: Resolve, limits: Limits, device: torch.device, stop: ShouldStop
) -> Certificate:
    """Certify a repository token model (``certificates``): resolve it in float64 and in float32 (the same
    version), plan the check against its configured input shape and ``limits``, and run it on ``device``.

    The input is ``spec.x`` rounded to float32 (so both precisions see the same numbers; token ids as they
    are, for a model with a vocabulary) or drawn from ``spec.seed``. Raises what ``resolve`` and
    ``plan_model_check`` raise (``NotFound``, ``InvalidArgument``, ``FailedPrecondition``,
    ``ResourceExhausted`` naming the field), ``Cancelled`` when ``stop`` answers true between permutations.
    """
    if spec.model_version < 0:  # before resolve, which would answer NOT_FOUND for it
        raise InvalidArgument(
            f"must be >= 0 (0 is the latest), got {spec.model_version}", field="model_version"
        )
    exact = resolve(spec.model, spec.model_version, torch.float64)
    plan = plan_model_check(
        spec,
        exact.input_shape,
        max_tensor_elements=limits.max_tensor_elements,
        max_permutations=limits.max_permutations,
        vocabulary=exact.vocabulary,
        fixed_axes=exact.fixed_axes,
    )
    served = resolve(spec.model, exact.version, torch.float32)
    if spec.x is None:
        x = noise.draw_input(plan.shape, spec.seed, exact.vocabulary)
    elif exact.vocabulary is not None:
        x = torch.from_numpy(np.ascontiguousarray(spec.x)).to(torch.int64)
    else:
        x = torch.from_numpy(np.ascontiguousarray(spec.x)).to(torch.float32).to(torch.float64)
    perms = certify.permutations(
        plan.shape[1], exhaustive=plan.exhaustive, samples=plan.samples, seed=spec.seed
    )
    result = certify.certify(
        _on_device(exact.graph, device),
        _on_device(served.graph, device),
        x.to(device),
        perms,
        action=spec.action,
        exhaustive=plan.exhaustive,
        threshold=plan.threshold,
        tolerance=plan.tolerance,
        should_stop=stop,
    )
    return replace(result, model=exact.name, model_version=exact.version)


def _on_device(graph: torch.fx.GraphModule, device: torch.device) -> torch.fx.GraphModule:
    """``graph`` (changed in place) on ``device``: its parameters and buffers, and every node that names a
    device (``torch.export`` records ``device=cpu`` on the tensors a model creates), so a model exported on
    one device runs on the server's. The ``aten._assert_tensor_metadata`` checks ``torch.export`` puts
    before a cast (``x.float()``, ``.to(torch.bfloat16)``) are removed: they assert the dtype the model was
    exported in, which the float64 load changes on purpose."""
    graph.to(device)
    changed = False
    for node in list(graph.graph.nodes):
        if node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
            graph.graph.erase_node(node)
            changed = True
            continue
        named = node.kwargs.get("device")
        if isinstance(named, torch.device | str) and torch.device(named) != device:
            node.kwargs = {**node.kwargs, "device": device}
            changed = True
    if changed:
        graph.recompile()
    return graph


def token_model_resolver(models: TaskModels) -> Resolve:
    """The ``Resolve`` of ``model_certificate`` over a repository of token models: a version loaded in the
    precision asked for, with the input shape (B, T, D) of its configuration (``batch_size`` and
    ``sequence_length`` when declared, else the B = 2 and T = 5 it was probed with, and ``d_model``; a
    model with a ``vocabulary`` takes token ids (B, T)); B and T are fixed for a given x only when declared.

    Concurrent calls may load at once (``repository.artifacts.load_pt2`` serialises ``torch.export.load``).
    Raises ``NotFound`` on ``model`` / ``model_version`` for an unknown name or version."""

    def resolve(name: str, version: int, dtype: torch.dtype) -> TokenModel:
        loaded = models.load(name, version, dtype)
        config = loaded.config
        shape: tuple[int, ...] = (config.batch, config.length)
        fixed: tuple[bool, ...] = (config.batch_size is not None, config.sequence_length is not None)
        if config.vocabulary is None:
            shape, fixed = (*shape, config.hidden_size), (*fixed, True)
        return TokenModel(loaded.name, loaded.version, loaded.module, shape, config.vocabulary, fixed)

    return resolve
