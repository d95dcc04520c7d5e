"""Classify results as messages: one image's top classes (optionally its logits)."""

from __future__ import annotations

from nnprobe import tensors
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.vision.v1 import vision_pb2 as pb

from nnprobe_services.vision.classification import classify


def classification(
    image: common_pb2.Image,
    result: classify.ImageResult,
    top_k: int,
    return_logits: bool,
    labels: tuple[str, ...] | None = None,
) -> pb.Classification:
    """One image's ``top_k`` classes, batch size and timings; its (classes,) float32 logits on request."""
    message = pb.Classification(
        name=image.name,
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
