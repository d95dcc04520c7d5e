"""The Open Inference Protocol's calls with plain values (no gRPC): status and metadata over the protocol core
(``protocol.OpenInference``, in a worker thread), and ModelInfer on the same path as ``Classify``: the
request is checked and its images decoded and the model loaded in a compute thread (``prepare``), then
classified there or through the model's dynamic batcher (``outputs``, on the event loop)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nnprobe_services.errors import StopSignal
from nnprobe_services.vision.classification.workflow import Classification, Prepared
from nnprobe_services.vision.open_inference import protocol
from nnprobe_services.vision.open_inference.values import (
    InputTensor,
    OutputTensor,
    RequestedOutput,
    Signature,
)


@dataclass(frozen=True)
class InferQuery:
    """A ModelInfer request as plain values: ``headers`` are the inputs without their contents, which
    ``inputs`` reads (in the compute thread, after the checks that need no contents)."""

    model_name: str
    model_version: str
    id: str
    outputs: list[RequestedOutput]
    headers: list[InputTensor]
    inputs: Callable[[], list[InputTensor]]


@dataclass
class Inferred:
    """A ModelInfer request after its compute-pool part: the model's signature and served version, and the
    prepared classification."""

    signature: Signature
    served: int
    job: Prepared
    requested: list[RequestedOutput]


class Inference:
    """The protocol's entry points over ``core`` and ``classification`` (whose store, batchers and limits
    ``Classify`` shares)."""

    def __init__(self, core: protocol.OpenInference, classification: Classification) -> None:
        self.core = core
        self.classification = classification

    def signature(self, name: str, version: str) -> Signature:
        return self.core.signature(*self.core.resolve(name, version))

    def model_ready(self, name: str, version: str) -> bool:
        resolved, served = self.core.resolve(name, version)
        return self.core.state(resolved, served)[0] == protocol.READY

    def index(self, ready_only: bool) -> list[tuple[str, str, str, str]]:
        rows = self.core.index()
        return [row for row in rows if row[2] == protocol.READY] if ready_only else rows

    def prepare(self, query: InferQuery, stop: StopSignal) -> Inferred:
        """Triton's checks in Triton's order, then the model input and the model; the results too when
        dynamic batching is off."""
        core, classifier = self.core, self.classification.classifier
        name, served = core.resolve(query.model_name, query.model_version)
        signature = core.signature(name, served)
        core.check_outputs(signature, query.outputs)
        core.check_inputs(signature, query.headers)
        pixels = core.pixels(signature, query.inputs())
        model = core.load(name, served)
        if model.record.num_classes != signature.classes:
            signature = core.signature(name, served)  # classes known once loaded
        results = None if classifier.batching else classifier.forward(model, pixels, stop)
        return Inferred(signature, served, Prepared(model, pixels, 0.0, results), query.outputs)

    async def outputs(self, inferred: Inferred, deadline: float | None) -> list[OutputTensor]:
        """The requested outputs; a full batching queue is ``ResourceExhausted`` on ``inputs``."""
        results = await self.classification.results(inferred.job, deadline, field="inputs")
        logits = np.stack([result.logits for result in results])
        return self.core.outputs(inferred.signature, logits, inferred.requested)
