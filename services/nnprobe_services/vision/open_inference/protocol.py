"""The Open Inference Protocol (KServe v2 / Triton ``inference.GRPCInferenceService``) over the classifiers
of the model store (no gRPC, no protobuf): model signatures, versions, readiness, request checks and the
classification extension, mapped onto the same path as ``Classify``.

Every classifier takes one of three inputs, declared optional in its metadata (a request gives exactly one):

- ``pixels``: FP32 ``[-1, 3, H, W]``, RGB in [0, 1], already resized and cropped to the model's input size
  (``H`` x ``W``); the model's own normalisation is applied inside, as for ``Classify`` with ``skip_resize``.
- ``image``: UINT8 ``[-1, -1, -1, 3]``, raw RGB pixels (N, height, width, 3) of any size; resized and cropped
  as ``Classify`` does.
- ``image_bytes``: BYTES ``[-1, 1]``, encoded images (JPEG, PNG, WebP, BMP); decoded, resized and cropped as
  ``Classify`` does.

and has two outputs, ``logits`` and ``probabilities`` (softmax of the logits in float64, stored as float32),
both FP32 ``[-1, classes]``. A requested output with ``classification`` = k (Triton's classification
extension) comes back as BYTES ``[-1, k]`` holding ``"<value>:<index>:<label>"`` for the k largest values,
largest first (``"<value>:<index>"`` when the model has no labels), ``<value>`` printed as C's ``%f``.

Errors follow Triton Inference Server's wording and status codes: unknown models and versions are
``NotFound`` ("Request for unknown model: ..."), a model that cannot be loaded is ``Unavailable``, and
wrong input names, datatypes, shapes and sizes are ``InvalidArgument``.

Source: the KServe Open Inference Protocol specification (kserve.github.io/website, "Open Inference
Protocol (V2 Inference Protocol)") and Triton's classification extension
(triton-inference-server/server docs/protocol/extension_classification.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from nnprobe_services.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
)
from nnprobe_services.repository import versions
from nnprobe_services.repository.names import is_version_name
from nnprobe_services.vision.classification import classify
from nnprobe_services.vision.images import decode
from nnprobe_services.vision.models.registry import LoadedModel
from nnprobe_services.vision.models.store import ModelStore
from nnprobe_services.vision.open_inference.values import (
    DTYPES,
    ELEMENT_BYTES,
    ENCODED,
    IMAGE,
    LOADING,
    LOGITS,
    PIXELS,
    PROBABILITIES,
    READY,
    UNAVAILABLE,
    InputTensor,
    OutputTensor,
    ProtocolInvalidArgument,
    ProtocolNotFound,
    ProtocolUnavailable,
    RequestedOutput,
    Signature,
    TensorSpec,
    unknown_model,
)

log = logging.getLogger("nnprobe.vision.oip")


def classification(values: np.ndarray, count: int, labels: Sequence[str]) -> list[bytes]:
    """Triton's classification strings for one row of ``values`` (classes,): the ``count`` largest, largest
    first, ties by lower index; ``"%f:<index>:<label>"`` (no label part when ``labels`` is empty)."""
    order = np.lexsort((np.arange(len(values)), -values.astype(np.float64)))[:count]
    named = len(labels) == len(values)
    return [(f"{float(values[i]):f}:{int(i)}" + (f":{labels[i]}" if named else "")).encode() for i in order]


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, classes) logits, computed in float64 (as ``classify.top_k``), as float32."""
    values = logits.astype(np.float64)
    values = np.exp(values - values.max(axis=1, keepdims=True))
    return (values / values.sum(axis=1, keepdims=True)).astype(np.float32)


class OpenInference:
    """The protocol's data plane over ``store``'s models. ``max_batch_size``: images per request (the
    server's ``batch_queue_size``); ``default_model``: the model whose readiness is the server's."""

    def __init__(
        self, store: ModelStore, limits: decode.ImageLimits, *, max_batch_size: int, default_model: str
    ) -> None:
        self.store = store
        self.limits = limits
        self.max_batch_size = max_batch_size
        self.default_model = default_model
        self._loads: dict[tuple[str, int], Future[LoadedModel]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oip-load")

    # -- models and versions -------------------------------------------------------------------------
    def names(self) -> list[str]:
        return self.store.names()

    def resolve(self, name: str, version: str) -> tuple[str, int]:
        """(name, served version) of a request's model and version string ("" = the default version).

        Built-in models have the one version "1"; repository models their folders' versions (also when the
        folder is broken: such a model is not ready, and its metadata and inference are Triton's
        ``Unavailable`` with the reason). Raises Triton's ``NotFound`` for anything else."""
        version = version.strip()
        if self.store.is_builtin(name):
            if version not in ("", "1"):
                raise unknown_model(name, version)
            return name, 1
        if self.store.repository is None or not name or name.startswith("."):
            raise unknown_model(name)
        try:
            entry = self.store.repository.get(name)
        except NotFound:
            raise unknown_model(name) from None
        except InvalidArgument:
            raise unknown_model(name) from None
        except FailedPrecondition:  # a broken folder: known but not ready; metadata and infer say why
            return name, self._folder_version(name, version)
        if not version:
            return name, entry.default_version.version
        if not is_version_name(version) or int(version) not in [v.version for v in entry.versions]:
            raise unknown_model(name, version)
        return name, int(version)

    def _folder_version(self, name: str, version: str) -> int:
        """The version a request names of a model whose folder is broken: one of its version folders (the
        highest when it names none; 0 when there is none)."""
        assert self.store.repository is not None
        taken = versions.taken(self.store.repository.root / name)
        if not version:
            return taken[-1] if taken else 0
        if not is_version_name(version) or int(version) not in taken:
            raise unknown_model(name, version)
        return int(version)

    def versions(self, name: str) -> tuple[str, ...]:
        if self.store.is_builtin(name):
            return ("1",)
        assert self.store.repository is not None
        return tuple(str(v.version) for v in self.store.repository.get(name).versions)

    def signature(self, name: str, version: int) -> Signature:
        """The model's inputs, outputs and platform (from its loaded state when loaded, else its config)."""
        loaded = self._loaded(name, version)
        try:
            record, labels = (loaded.record, loaded.labels) if loaded else self.store.describe(name)
        except FailedPrecondition as error:  # a broken repository folder
            raise ProtocolUnavailable(
                f"Request for unknown model: '{name}' has no available versions: {error.message}",
                field="model_name",
            ) from None
        height, width = record.preprocessing.crop
        classes = record.num_classes
        if self.store.is_builtin(name):
            backend = loaded.backend.name if loaded else self._builtin_backend()
            platform = "onnxruntime_onnx" if backend == "onnxruntime" else "pytorch_eager"
        else:
            assert self.store.repository is not None
            fmt = self.store.repository.resolve(name, version)[1].format
            backend, platform = (
                ("onnxruntime", "onnxruntime_onnx")
                if fmt == "onnx"
                else (
                    "pytorch",
                    "pytorch_torch_export",
                )
            )
        c = classes or -1
        return Signature(
            name=name,
            versions=self.versions(name),
            platform=platform,
            backend=backend,
            inputs=(
                TensorSpec(PIXELS, "FP32", (-1, 3, height, width), optional=True),
                TensorSpec(IMAGE, "UINT8", (-1, -1, -1, 3), optional=True),
                TensorSpec(ENCODED, "BYTES", (-1, 1), optional=True),
            ),
            outputs=(TensorSpec(LOGITS, "FP32", (-1, c)), TensorSpec(PROBABILITIES, "FP32", (-1, c))),
            max_batch_size=self.max_batch_size,
            height=height,
            width=width,
            classes=classes,
            labels=labels,
        )

    def _builtin_backend(self) -> str:
        return "onnxruntime" if self.store.builtin_uses_onnx() else "pytorch"

    def _loaded(self, name: str, version: int) -> LoadedModel | None:
        return self.store.loaded(name, 0 if self.store.is_builtin(name) else version)

    # -- readiness -----------------------------------------------------------------------------------
    def state(self, name: str, version: int, *, load: bool = True) -> tuple[str, str]:
        """(state, reason): READY when loaded; LOADING while a load runs (``load`` starts one when none
        has been tried); UNAVAILABLE with the reason when loading failed or was not tried."""
        if self._loaded(name, version) is not None:
            return READY, ""
        key = (name, version)
        with self._lock:
            future = self._loads.get(key)
            if future is None and load:
                store_version = None if self.store.is_builtin(name) else version
                future = self._pool.submit(self.store.get, name, store_version)
                self._loads[key] = future
        if future is None:
            return UNAVAILABLE, "not loaded yet"
        if not future.done():
            return LOADING, "loading"
        error = future.exception()
        if error is None:
            return READY, ""
        return UNAVAILABLE, str(error)

    def server_ready(self) -> bool:
        """Whether the default model is loaded (its first query starts loading it)."""
        name = self.default_model
        try:
            version = self.resolve(name, "")[1]
        except NotFound:
            return False
        return self.state(name, version)[0] == READY

    def index(self) -> list[tuple[str, str, str, str]]:
        """Every model version as (name, version, state, reason), without starting loads."""
        rows = []
        for name in self.names():
            try:
                versions = self.versions(name)
            except ServiceError as error:
                rows.append((name, "", UNAVAILABLE, error.message))
                continue
            for version in versions:
                rows.append((name, version, *self.state(name, int(version), load=False)))
        return rows

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- inference -----------------------------------------------------------------------------------
    def load(self, name: str, version: int) -> LoadedModel:
        """The loaded model; a model that cannot be loaded is Triton's UNAVAILABLE, with the reason."""
        try:
            return classify.load_model(
                self.store, name, None if self.store.is_builtin(name) else version, "model_name"
            )
        except (FailedPrecondition, InvalidArgument) as error:
            raise ProtocolUnavailable(
                f"Request for unknown model: '{name}' has no available versions: {error.message}",
                field="model_name",
            ) from None

    def check_outputs(self, signature: Signature, requested: Sequence[RequestedOutput]) -> None:
        """Triton's checks of the requested outputs: known names, once each, class counts >= 1."""
        known = {spec.name for spec in signature.outputs}
        seen: set[str] = set()
        for i, output in enumerate(requested):
            if output.name not in known:
                raise ProtocolInvalidArgument(
                    f"unexpected inference output '{output.name}' for model '{signature.name}'",
                    field=f"outputs[{i}].name",
                )
            if output.name in seen:
                raise ProtocolInvalidArgument(
                    f"output '{output.name}' is requested more than once for model '{signature.name}'",
                    field=f"outputs[{i}].name",
                )
            seen.add(output.name)
            if output.class_count is not None and output.class_count < 1:
                raise ProtocolInvalidArgument(
                    f"classification count for output '{output.name}' must be positive, got "
                    f"{output.class_count}",
                    field=f"outputs[{i}].parameters.classification",
                )

    def image_inputs(self, signature: Signature, inputs: Sequence[InputTensor]) -> list[decode.ImageInput]:
        """The request's one input as ``Classify``'s image inputs, after Triton's name, datatype and shape
        checks. FP32 pixels become (H, W, 3) float arrays (skip-resize path), UINT8 (H, W, 3) arrays,
        BYTES the encoded decode."""
        self.check_inputs(signature, inputs)
        tensor = inputs[0]
        shape, batch = tensor.shape, tensor.shape[0]
        field = f"inputs[0].{tensor.name}"
        if tensor.datatype == "BYTES":
            assert isinstance(tensor.data, list)
            return [decode.ImageInput(data, None, f"{field}[{i}]") for i, data in enumerate(tensor.data)]
        assert isinstance(tensor.data, np.ndarray)
        array = tensor.data.reshape(shape)
        if tensor.name == PIXELS:
            array = array.transpose(0, 2, 3, 1)
        return [decode.ImageInput(b"", array[i], f"{field}[{i}]") for i in range(batch)]

    def check_inputs(self, signature: Signature, inputs: Sequence[InputTensor]) -> None:
        """Triton's checks of the inputs' names, number, datatype, shape and batch size, which need no
        contents: they come before the contents' sizes are compared with the shape."""
        model = signature.name
        specs = {spec.name: spec for spec in signature.inputs}
        for i, tensor in enumerate(inputs):
            if tensor.name not in specs:
                raise ProtocolInvalidArgument(
                    f"unexpected inference input '{tensor.name}' for model '{model}'",
                    field=f"inputs[{i}].name",
                )
        names = [tensor.name for tensor in inputs]
        if len(inputs) != 1:
            raise ProtocolInvalidArgument(
                f"expected 1 inputs but got {len(inputs)} inputs for model '{model}'. Got input(s) "
                f"{names}; give exactly one of {', '.join(specs)}",
                field="inputs",
            )
        tensor = inputs[0]
        spec = specs[tensor.name]
        if tensor.datatype != spec.datatype:
            raise ProtocolInvalidArgument(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', but model '{model}' "
                f"expects '{spec.datatype}'",
                field="inputs[0].datatype",
            )
        shape = tensor.shape
        fits = len(shape) == len(spec.shape) and all(
            want == -1 or got == want for got, want in zip(shape, spec.shape, strict=True)
        )
        if not fits or any(d < 0 for d in shape):
            raise ProtocolInvalidArgument(
                f"unexpected shape for input '{tensor.name}' for model '{model}'. Expected "
                f"{_dims(spec.shape)}, got {_dims(shape)}",
                field="inputs[0].shape",
            )
        batch = shape[0]
        if not 1 <= batch <= self.max_batch_size:
            raise ProtocolInvalidArgument(
                f"inference request batch-size must be <= {self.max_batch_size} (and >= 1) for '{model}', "
                f"got {batch}",
                field="inputs[0].shape",
            )

    def pixels(self, signature: Signature, inputs: Sequence[InputTensor]) -> torch.Tensor:
        """(N, 3, H, W) float32 model input through ``Classify``'s decoding and preprocessing."""
        plain = self.image_inputs(signature, inputs)
        prep = self.store.describe(signature.name)[0].preprocessing
        return decode.model_inputs(plain, prep, self.limits, skip_resize=inputs[0].name == PIXELS)

    def outputs(
        self, signature: Signature, logits: np.ndarray, requested: Sequence[RequestedOutput]
    ) -> list[OutputTensor]:
        """The requested outputs (all, when none is named) for (N, classes) float32 ``logits``."""
        wanted = list(requested) or [RequestedOutput(spec.name) for spec in signature.outputs]
        results = []
        for output in wanted:
            values = logits if output.name == LOGITS else probabilities(logits)
            if output.class_count:
                count = min(output.class_count, values.shape[1])
                rows = [s for row in values for s in classification(row, count, signature.labels)]
                results.append(OutputTensor(output.name, "BYTES", (len(values), count), strings=rows))
            else:
                results.append(OutputTensor(output.name, "FP32", tuple(values.shape), data=values))
        return results


def _dims(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


__all__ = [
    "DTYPES",
    "ELEMENT_BYTES",
    "ENCODED",
    "IMAGE",
    "LOADING",
    "LOGITS",
    "PIXELS",
    "PROBABILITIES",
    "READY",
    "UNAVAILABLE",
    "InputTensor",
    "OpenInference",
    "OutputTensor",
    "ProtocolInvalidArgument",
    "ProtocolNotFound",
    "ProtocolUnavailable",
    "RequestedOutput",
    "Signature",
    "TensorSpec",
    "classification",
    "probabilities",
    "unknown_model",
]
