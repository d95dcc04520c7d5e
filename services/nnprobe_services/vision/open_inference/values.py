"""The Open Inference Protocol's plain values (no gRPC, no protobuf): tensor names and datatypes, model
signatures, request inputs and outputs, and errors in Triton's wording (clients match their start)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnprobe_services.errors import InvalidArgument, NotFound, Unavailable

PIXELS, IMAGE, ENCODED = "pixels", "image", "image_bytes"
LOGITS, PROBABILITIES = "logits", "probabilities"
#: Triton's model states (RepositoryIndex).
READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
#: Bytes per element of the numeric datatypes a request may use (BYTES elements are length-prefixed).
ELEMENT_BYTES = {"UINT8": 1, "FP32": 4}
DTYPES: dict[str, np.dtype] = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of a model's metadata: ``shape`` includes the batch dimension; -1 is variable."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class Signature:
    """A model as the protocol describes it. ``versions``: version strings; ``classes`` 0 when unknown
    until loaded; ``platform`` in Triton's naming (``onnxruntime_onnx``, ``pytorch_torch_export``...)."""

    name: str
    versions: tuple[str, ...]
    platform: str
    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    height: int
    width: int
    classes: int
    labels: tuple[str, ...]


@dataclass
class InputTensor:
    """One request input: numeric ``data`` as a flat array of the datatype, or BYTES as a list of bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]


@dataclass(frozen=True)
class RequestedOutput:
    """An output asked for; ``class_count`` (>= 1) asks for the classification extension."""

    name: str
    class_count: int | None = None


@dataclass
class OutputTensor:
    """One response output: FP32 ``data`` (N, classes), or BYTES ``strings`` row-major."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None
    strings: list[bytes] | None = None


class _TritonWording:
    """Errors whose message is Triton's text as it is (clients match its start); the field still travels
    as the ``google.rpc.BadRequest`` detail."""

    message: str

    def __str__(self) -> str:
        return self.message


class ProtocolInvalidArgument(_TritonWording, InvalidArgument):
    """INVALID_ARGUMENT in Triton's wording."""


class ProtocolNotFound(_TritonWording, NotFound):
    """NOT_FOUND in Triton's wording."""


class ProtocolUnavailable(_TritonWording, Unavailable):
    """UNAVAILABLE in Triton's wording."""


def unknown_model(name: str, version: str = "") -> NotFound:
    """Triton's NOT_FOUND for a model (and version) it does not have."""
    which = f"'{name}'" + (f" version {version}" if version else "")
    return ProtocolNotFound(f"Request for unknown model: {which} is not found", field="model_name")
