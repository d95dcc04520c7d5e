"""The networks the empirical checks run, for whatever a request names: ``prober`` builds, for a list of
layers, a network returning their outputs (N, C', H, W) and its input channels, at the analysed input size
or another one (the tiles of a tiling proof), with one of three kinds of weights:

* ``transparent``: the gradient-transparent twin of the graph (``empirical.twin_probe``), for ``verify``;
* ``random``: PyTorch's default initialisation drawn from a seed (named models, ``empirical.model_probe``;
  layer lists, ``empirical.chain_probe``);
* ``trained``: the user's own weights (a repository model's ``model.pt2`` or ``model.onnx``, an ONNX model
  sent in the request; ``trained``).

``weights_of`` resolves the weights a request asks for (empty: trained where the model has its own, random
otherwise) and refuses what cannot be had (``FailedPrecondition`` on the request field given).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nnprobe_services.errors import FailedPrecondition, InvalidArgument
from nnprobe_services.repository import artifacts
from nnprobe_services.vision.receptive_fields import empirical, trained
from nnprobe_services.vision.receptive_fields.frontends import trace_worker
from nnprobe_services.vision.receptive_fields.graph import GraphField
from nnprobe_services.vision.receptive_fields.values import FieldRequest, RepositoryModel

#: (layers, weights, seed, input size or None for the analysed one) -> (network, input channels).
Prober = Callable[..., tuple[empirical.Probe, int]]


def program_of(user: RepositoryModel) -> trace_worker.Program:
    """The worker key of a repository model's ``model.pt2`` (a replaced file is a new key)."""
    stat = user.path.stat()
    return trace_worker.Program(
        user.name,
        str(user.path),
        (stat.st_ino, stat.st_size, stat.st_mtime_ns),
        user.max_nodes,
        user.max_bytes,
    )


def onnx_bytes(user: RepositoryModel) -> bytes:
    """The serialised ONNX model with its external data, after the repository's checks."""
    from onnx.external_data_helper import load_external_data_for_model

    field = "model.name"
    try:
        model = artifacts.check_onnx(
            user.path, max_nodes=user.max_nodes, max_bytes=user.max_bytes, field=field
        )
    except InvalidArgument as error:
        raise FailedPrecondition(
            f"model {user.name!r} version {user.version}: {error.message}", field=field
        ) from None
    load_external_data_for_model(model, str(user.path.parent))  # inside the folder: checked above
    return model.SerializeToString()


def has_own_weights(request: FieldRequest, user: RepositoryModel | None) -> bool:
    """Whether the model comes with its own weights (a repository model, ONNX bytes)."""
    return user is not None or bool(request.onnx)


def weights_of(asked: str, request: FieldRequest, user: RepositoryModel | None, field: str) -> str:
    """``random`` or ``trained`` for what the request asks (``asked``: "", ``random`` or ``trained``)."""
    own = has_own_weights(request, user)
    if not asked:
        return "trained" if own else "random"
    if asked == "trained" and not own:
        raise FailedPrecondition(
            "trained weights need a model of the model repository or an ONNX model; built-in architectures "
            "and layer lists have random weights only",
            field=field,
        )
    if asked == "random" and own:
        what = "a model of the model repository" if user is not None else "an ONNX model"
        raise FailedPrecondition(
            f"random weights need a named architecture or a layer list, not {what}; use its trained weights",
            field=field,
        )
    return asked


def prober(
    request: FieldRequest,
    input_size: tuple[int, int],
    device: torch.device,
    graph: GraphField | None,
    user: RepositoryModel | None,
) -> Prober:
    """A builder of networks that expose the named layers' outputs (see the module docstring)."""

    def probe(
        layers: list[str], weights: str, seed: int = 0, size: tuple[int, int] | None = None
    ) -> tuple[empirical.Probe, int]:
        at = size or input_size
        if weights == "transparent" and graph is not None and (graph.frontend == "onnx" or user is not None):
            return empirical.twin_probe(graph.capture, layers, device)
        if weights == "trained":
            if user is not None and user.format != "onnx":
                return trained.program_probe(program_of(user), at, layers, device)
            data = onnx_bytes(user) if user is not None else request.onnx
            return trained.onnx_probe(data, at, layers, device, request.model or "onnx model")
        if request.model:
            return empirical.model_probe(
                request.model,
                layers,
                device,
                weights=weights,
                seed=seed,
                input_size=at,
                options=request.model_options,
            )
        specs = list(request.layers or [])
        return empirical.chain_probe(specs, at, device, weights=weights, seed=seed)

    return probe
