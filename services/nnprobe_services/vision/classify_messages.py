"""ListModels and Classify results as messages: the model catalogue with where each model's weights are,
and one image's top classes (optionally its logits)."""

from __future__ import annotations

from nnprobe import tensors
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.vision.v1 import vision_pb2 as pb

from nnprobe_services.vision import classify, models


def list_models(store: models.ModelStore, default: str) -> pb.ListModelsResponse:
    """Every servable model, ``default`` first. Looks for weights files and hashes the ones found (once per
    file version), so it runs in a worker thread."""
    response = pb.ListModelsResponse(default_model=default)
    table = models.records()
    for name in sorted(table, key=lambda n: n != default):
        record = table[name]
        where = store.location(name)
        prep = record.preprocessing
        response.models.append(
            pb.ModelInfo(
                name=name,
                architecture=record.architecture,
                source=record.source,
                weights_present=where.path is not None,
                weights_path=str(where.path or ""),
                weights_file_name=record.file_name,
                searched=list(where.searched),
                version=models.sha256_of(where.path) if where.path is not None else "",
                preprocessing=pb.Preprocessing(
                    resize=prep.resize,
                    crop=pb.Extent(height=prep.crop[0], width=prep.crop[1]),
                    interpolation=prep.interpolation,
                    mean=list(prep.mean),
                    std=list(prep.std),
                ),
                num_classes=record.num_classes,
                is_default=name == default,
            )
        )
    return response


def classification(
    image: common_pb2.Image, result: classify.ImageResult, top_k: int, return_logits: bool
) -> pb.Classification:
    """One image's ``top_k`` classes, batch size and timings; its (classes,) float32 logits on request."""
    message = pb.Classification(
        name=image.name,
        top=[
            pb.ClassScore(index=c.index, label=c.label, probability=c.probability)
            for c in classify.top_k(result.logits, top_k)
        ],
        batch_size=result.batch_size,
        queue_seconds=result.queue_seconds,
        inference_seconds=result.inference_seconds,
    )
    if return_logits:
        message.logits.CopyFrom(tensors.to_tensor(result.logits))
    return message
