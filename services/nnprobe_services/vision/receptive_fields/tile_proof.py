"""The overlap-tile plan of a request's end point (``tiling.plan``) and, when asked, its proof: the network
the request names runs whole and tile by tile (``tiling.prove``) with random weights drawn from
``model.seed`` (named models, layer lists) or the model's own (repository and ONNX models), in float64 where
the network runs in it, else float32. Errors: those of ``tiling``, and ``FailedPrecondition`` on
``tiling.prove`` when the network cannot run on a tile's window (a program exported for one image size)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from nnprobe_services.errors import FailedPrecondition, ServiceError, ShouldStop
from nnprobe_services.vision.receptive_fields import empirical, probes
from nnprobe_services.vision.receptive_fields import tiling as tiles
from nnprobe_services.vision.receptive_fields.values import FieldRequest, FieldResult, RepositoryModel


def tiling(
    request: FieldRequest,
    result: FieldResult,
    probe: probes.Prober,
    user: RepositoryModel | None,
    device: torch.device,
    should_stop: ShouldStop,
) -> tiles.TilingPlan:
    """The plan for ``request.tiling`` over ``result``'s end point, proven when asked."""
    options = request.tiling
    assert options is not None
    context = result.graph.global_context if result.graph is not None else ""
    plan = tiles.plan(
        result.fields, result.end_point, result.input_size, options.tile, global_context=context
    )
    if not options.prove:
        return plan
    weights = probes.weights_of("", request, user, "tiling.prove")
    seed = request.weight_seed if weights == "random" else 0
    layer = result.end_point
    built: dict[tuple[int, int], tuple[empirical.Probe, int]] = {}

    def network(size: tuple[int, int]) -> tuple[empirical.Probe, int]:
        if size not in built:
            try:
                built[size] = probe([layer], weights, seed, size)
            except ServiceError as error:
                if size == result.input_size:
                    raise
                raise FailedPrecondition(
                    f"the network cannot run on a tile window of {size[0]} x {size[1]} pixels: "
                    f"{error.message}; export it for any image size to prove tiles",
                    field="tiling.prove",
                ) from None
        return built[size]

    def runner(dtype: torch.dtype) -> tiles.Runner:
        def run(size: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
            net = network(size)[0]
            if isinstance(net, torch.nn.Module):
                net.to(dtype)
            return lambda x: net(x)[layer]

        return run

    channels = network(result.input_size)[1]
    size = result.input_size
    try:
        proven = tiles.prove(
            plan, runner(torch.float64), channels, size, torch.float64, device, 0, should_stop
        )
    except RuntimeError:  # a graph that holds float32 constants: prove in float32
        proven = tiles.prove(
            plan, runner(torch.float32), channels, size, torch.float32, device, 0, should_stop
        )
    return dataclasses.replace(proven, weights=weights)
