"""The ``model`` of a ComputeReceptiveField request: a named model with its constructor options, or an ONNX
model, sent as its graph without its weights' values (``onnx_graph``) unless the request needs them."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.vision import onnx_graph

#: The remedies of an ONNX model too large for a message.
ONNX_HINT = (
    "send the ONNX model without its weights' values (send_weights=False; the default when the onnx "
    "package is installed: pip install 'nnprobe[onnx]'), or upload it to the model repository "
    "(upload_model; nnprobe models upload) and name it"
)


def model_spec(
    model: str | None,
    onnx: bytes | str | Path | None,
    seed: int,
    version: int,
    options: Mapping[str, Any] | None = None,
    send_weights: bool | None = None,
    runs_weights: bool = False,
) -> pb.ModelSpec:
    """A named model (of the repository, or built in) with its constructor ``options`` (each value sent as
    JSON), or an ONNX model given as bytes or a file path, sent without its weights' values unless
    ``send_weights`` or, by default, ``runs_weights`` (the request runs them: see ``weightless``)."""
    data = b""
    if onnx is not None and weightless(onnx, send_weights, runs_weights):
        with contextlib.suppress(ValueError):  # not a model onnx reads: the server says what is wrong
            data, _ = onnx_graph.weightless(onnx)
    if not data:
        data = Path(onnx).read_bytes() if isinstance(onnx, (str, Path)) else (onnx or b"")
    spec = pb.ModelSpec(name=model or "", seed=seed, onnx=data, version=version)
    for key, value in (options or {}).items():
        spec.options[str(key)] = json.dumps(value)
    return spec


def hint(request: pb.ComputeReceptiveFieldRequest) -> str:
    """What to do when ``request`` is too large for a message (``ONNX_HINT`` when it carries ONNX bytes)."""
    return ONNX_HINT if request.model.onnx else ""


def weightless(onnx: object, send_weights: bool | None, runs_weights: bool) -> bool:
    """Whether an ONNX model goes without its weights' values: as asked, else whenever the request needs
    only the graph (``runs_weights`` False: no effective field, no proof of a tiling) and the ``onnx``
    package is here to strip them."""
    if onnx is None:
        return False
    if send_weights is not None:
        if not send_weights and not onnx_graph.available():
            raise ImportError("send_weights=False needs the onnx package: pip install 'nnprobe[onnx]'")
        return not send_weights
    return not runs_weights and onnx_graph.available()
