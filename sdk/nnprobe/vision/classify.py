"""ImageNet classification of images (``classify``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnprobe import tensors
from nnprobe._client import USE_CLIENT_DEFAULT, BaseClient, UseClientDefault
from nnprobe._requests import request_arguments
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.display import rich_result
from nnprobe.vision.images import ImageLike, image_messages


@rich_result()
@dataclass
class ClassScore:
    """A class and its softmax probability."""

    index: int
    label: str
    probability: float


def class_scores(messages: Iterable[Any]) -> list[ClassScore]:
    """``ClassScore`` messages as dataclasses, in order."""
    return [ClassScore(c.index, c.label, c.probability) for c in messages]


@rich_result(tables={"top": "top"})
@dataclass
class Classification:
    """The classification of one image: ``top`` most probable first."""

    name: str
    top: list[ClassScore]
    #: (num_classes,) float32 logits when asked for, else None.
    logits: np.ndarray | None
    batch_size: int
    queue_seconds: float
    inference_seconds: float

    @property
    def label(self) -> str:
        """The top-1 label."""
        return self.top[0].label

    @property
    def index(self) -> int:
        """The top-1 class index."""
        return self.top[0].index

    @property
    def probability(self) -> float:
        """The top-1 probability."""
        return self.top[0].probability


def _top_rows(result: ClassifyResult) -> list[dict[str, Any]]:
    """One row per image and rank: image name, rank (1 = most probable), class index, label, probability."""
    return [
        {"image": c.name, "rank": rank, "index": s.index, "label": s.label, "probability": s.probability}
        for c in result.results
        for rank, s in enumerate(c.top, start=1)
    ]


@rich_result(tables={"top": _top_rows})
@dataclass
class ClassifyResult:
    """Outcome of ``classify``: one ``Classification`` per image, in order."""

    results: list[Classification]
    model: str
    model_version: str
    preprocess_seconds: float
    total_seconds: float
    raw: Any = field(repr=False, default=None)

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> Classification:
        return self.results[index]


def _classification(c: Any) -> Classification:
    return Classification(
        name=c.name,
        top=class_scores(c.top),
        logits=tensors.to_numpy(c.logits) if c.HasField("logits") else None,
        batch_size=c.batch_size,
        queue_seconds=c.queue_seconds,
        inference_seconds=c.inference_seconds,
    )


def _classify_result(r: Any) -> ClassifyResult:
    return ClassifyResult(
        results=[_classification(c) for c in r.results],
        model=r.model,
        model_version=r.model_version,
        preprocess_seconds=r.preprocess_seconds,
        total_seconds=r.total_seconds,
        raw=r,
    )


def classify_request(
    *,
    images: ImageLike | Iterable[ImageLike],
    model: str | None,
    top_k: int,
    skip_resize: bool,
    return_logits: bool,
    names: Sequence[str] | None,
    model_version: int,
) -> pb.ClassifyRequest:
    """The request of ``classify`` (sync and asyncio clients)."""
    return pb.ClassifyRequest(
        model_version=model_version,
        images=image_messages(images, names),
        model=model or "",
        top_k=top_k,
        skip_resize=skip_resize,
        return_logits=return_logits,
    )


class ClassifyMethods(BaseClient):
    """The classification method of ``VisionClient``."""

    _stub: Any

    def classify(
        self,
        images: ImageLike | Iterable[ImageLike],
        *,
        model: str | None = None,
        top_k: int = 5,
        skip_resize: bool = False,
        return_logits: bool = False,
        names: Sequence[str] | None = None,
        model_version: int = 0,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> ClassifyResult:
        """ImageNet top-``top_k`` classes of one image or a list of them.

        An image is a file path, encoded bytes (JPEG, PNG, WebP, BMP), a PIL image or an (H, W[, C]) numpy
        array (uint8, or float in [0, 1]). ``model``: a name from ``list_models`` (default: the server's
        default). ``skip_resize``: the images already have the model's input size (no resize or crop).
        ``names`` label the images in the results (file names are used for paths). ``model_version``: a
        repository model's version (0: its default version).
        """
        request = classify_request(**request_arguments(locals()))
        return _classify_result(self._unary(self._stub.Classify, request, timeout))
