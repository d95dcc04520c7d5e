"""ImageNet classification (no gRPC): forward passes, direct or through the dynamic batcher, and top-k
classes."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from nnprobe_services.errors import Cancelled, FailedPrecondition, ShouldStop, StopSignal
from nnprobe_services.vision.classification.batcher import BatcherMetrics, DynamicBatcher, Pending
from nnprobe_services.vision.models.registry import LoadedModel, WeightsMissing, imagenet_labels
from nnprobe_services.vision.models.store import ModelStore


@dataclass
class ClassScore:
    index: int
    label: str
    probability: float


@dataclass
class ImageResult:
    """One image's outcome: logits (classes,) float32, and how it was computed."""

    logits: np.ndarray
    batch_size: int
    queue_seconds: float
    inference_seconds: float


def load_model(store: ModelStore, name: str, version: int | None = None, field: str = "model") -> LoadedModel:
    """The loaded model ``name`` (built in, or a repository model at ``version``, default its default
    version); loading may read or download weights.

    Raises ``FailedPrecondition`` on ``field`` when its weights cannot be had (the message names the file
    and the places searched).
    """
    try:
        return store.get(name, version, field)
    except WeightsMissing as error:  # a FailedPrecondition that names no field: the one given here
        raise FailedPrecondition(error.message, field=field) from None


def top_k(logits: np.ndarray, k: int, labels: tuple[str, ...] | None = None) -> list[ClassScore]:
    """The ``k`` most probable classes (softmax in float64), most probable first; ties by index.

    ``labels``: class names in index order (default: ImageNet's); classes without a name show their index.
    """
    values = logits.astype(np.float64)
    probabilities = np.exp(values - values.max())
    probabilities /= probabilities.sum()
    order = np.lexsort((np.arange(len(values)), -probabilities))[:k]
    labels = imagenet_labels() if labels is None else labels
    return [
        ClassScore(int(i), labels[i] if len(labels) == len(values) else str(i), float(probabilities[i]))
        for i in order
    ]


@dataclass(frozen=True)
class BatchingSettings:
    enabled: bool
    max_size: int
    max_delay: float
    queue_size: int


class Classifier:
    """Runs classification requests for every model of a ``ModelStore``, batched or not.

    Without batching, ``forward`` computes a request's images in the caller's thread (a compute-pool
    worker). With batching, ``batched`` queues them with the model's ``DynamicBatcher`` and awaits their
    futures on the event loop: waiting holds no thread, and the batcher's thread runs the model.
    """

    def __init__(self, store: ModelStore, settings: BatchingSettings, metrics: BatcherMetrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.Lock()
        self._batchers: dict[str, DynamicBatcher] = {}

    @property
    def batching(self) -> bool:
        return self.settings.enabled

    def _batcher(self, model: LoadedModel) -> DynamicBatcher:
        name = model.record.name
        if model.repository_version:
            name = f"{name}:{model.repository_version}"
        key = f"{name}@{model.version}"
        with self._lock:
            if key not in self._batchers:
                self._batchers[key] = DynamicBatcher(
                    name,
                    model.predict,
                    max_size=min(self.settings.max_size, model.max_batch or self.settings.max_size),
                    max_delay=self.settings.max_delay,
                    queue_size=self.settings.queue_size,
                    metrics=self.metrics,
                )
            return self._batchers[key]

    def forward(self, model: LoadedModel, pixels: torch.Tensor, should_stop: ShouldStop) -> list[ImageResult]:
        """Logits of every image of ``pixels`` (N, 3, H, W) in chunks of ``max_size``, in this thread.

        Raises ``Cancelled`` between chunks when ``should_stop`` answers true.
        """
        results: list[ImageResult] = []
        chunks = pixels.split(self.settings.max_size)
        for index, chunk in enumerate(chunks):
            if should_stop():
                raise Cancelled(f"stopped after {index} of {len(chunks)} batches")
            start = time.monotonic()
            logits = model.predict(chunk).numpy()
            seconds = time.monotonic() - start
            results.extend(ImageResult(row, len(chunk), 0.0, seconds) for row in logits)
        return results

    async def batched(
        self, model: LoadedModel, pixels: torch.Tensor, *, deadline: float | None, field: str = "images"
    ) -> list[ImageResult]:
        """Logits of every image of ``pixels`` (N, 3, H, W) through the model's dynamic batcher.

        ``deadline`` (``time.monotonic()`` seconds) drops images still queued when it passes. Raises
        ``QueueFull`` (naming ``field``, the request field of the images) when the queue cannot take all of
        them, ``Cancelled`` (``deadline`` set) when the deadline passes first; when the awaiting task is
        cancelled, its queued images are dropped.
        """
        stop = StopSignal()
        batcher = self._batcher(model)
        items = batcher.submit(pixels, deadline=deadline, is_active=lambda: not stop.is_set(), field=field)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(i.future) for i in items)), timeout)
        except TimeoutError:
            stop.set("the deadline passed", deadline=True)
            raise Cancelled(
                "the deadline passed while the images waited for a batch", deadline=True
            ) from None
        except asyncio.CancelledError:
            stop.set("the client cancelled")
            raise
        return [self._result(item) for item in items]

    @staticmethod
    def _result(item: Pending) -> ImageResult:
        if item.dropped:
            raise Cancelled(
                f"the request was dropped before computing ({item.dropped})",
                deadline=item.dropped == "deadline",
            )
        if item.error is not None:
            raise item.error
        assert item.logits is not None
        return ImageResult(item.logits.numpy(), item.batch_size, item.queue_seconds, item.inference_seconds)

    def close(self) -> None:
        """Stop every batcher; queued images are dropped and their waiters told so."""
        with self._lock:
            for batcher in self._batchers.values():
                batcher.close()
