"""Classify messages to plain values and back: the request as a ``ClassifyQuery`` (its images read lazily,
in a compute thread), each image's top classes (optionally its logits) and the response."""

from __future__ import annotations

import time
from collections.abc import Sequence

from nnprobe import tensors
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.vision.v1 import vision_pb2 as pb

from nnprobe_services import validation as valid
from nnprobe_services.vision.classification import classify
from nnprobe_services.vision.classification.workflow import ClassifyPlan, ClassifyQuery, Prepared
from nnprobe_services.vision.images import decode


def query(request: pb.ClassifyRequest, max_elements: int) -> ClassifyQuery:
    """The request as plain values; ``max_elements`` bounds each raw pixel tensor."""
    received = time.monotonic()
    return ClassifyQuery(
        model=request.model,
        model_version=request.model_version,
        top_k=request.top_k,
        image_count=len(request.images),
        images=lambda: image_inputs(request.images, max_elements),
        names=[image.name for image in request.images],
        skip_resize=request.skip_resize,
        return_logits=request.return_logits,
        received=received,
    )


def image_inputs(
    messages: Sequence[common_pb2.Image], max_elements: int, field: str = "images"
) -> list[decode.ImageInput]:
    """Plain images; raw pixel tensors are read here (in a compute thread: they may be large)."""
    plain = []
    for i, image in enumerate(messages):
        if image.encoded or not image.HasField("pixels"):
            plain.append(decode.ImageInput(image.encoded, None, f"{field}[{i}].encoded", image.name))
            continue
        part = f"{field}[{i}].pixels"
        pixels = valid.tensor(image.pixels, part, max_elements=max_elements)
        plain.append(decode.ImageInput(b"", pixels, part, image.name))
    return plain


def response(
    plan: ClassifyPlan, prepared: Prepared, results: list[classify.ImageResult]
) -> pb.ClassifyResponse:
    """The response; ``total_seconds`` counts from the request's arrival to now."""
    query, model = plan.query, prepared.model
    message = pb.ClassifyResponse(
        model=plan.model, model_version=model.version, preprocess_seconds=prepared.ready - query.received
    )
    message.results.extend(
        classification(name, result, plan.top_k, query.return_logits, model.labels)
        for name, result in zip(query.names, results, strict=True)
    )
    message.total_seconds = time.monotonic() - query.received
    return message


def classification(
    name: str,
    result: classify.ImageResult,
    top_k: int,
    return_logits: bool,
    labels: tuple[str, ...] | None = None,
) -> pb.Classification:
    """One image's ``top_k`` classes, batch size and timings; its (classes,) float32 logits on request."""
    message = pb.Classification(
        name=name,
        top=[
            pb.ClassScore(index=c.index, label=c.label, probability=c.probability)
            for c in classify.top_k(result.logits, top_k, labels)
        ],
        batch_size=result.batch_size,
        queue_seconds=result.queue_seconds,
        inference_seconds=result.inference_seconds,
    )
    if return_logits:
        message.logits.CopyFrom(tensors.to_tensor(result.logits))
    return message
