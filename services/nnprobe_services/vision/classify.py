"""ImageNet classification: forward passes (direct or through the dynamic batcher) and top-k classes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from nnprobe_services.errors import Cancelled
from nnprobe_services.vision.batcher import BatcherMetrics, DynamicBatcher, Pending
from nnprobe_services.vision.models import LoadedModel, imagenet_labels
from nnprobe_services.vision.store import ModelStore


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


def logits_of(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) pixels in [0, 1] -> (N, classes) float32 logits on the CPU, via the model's backend."""
    if model.max_batch and len(pixels) > model.max_batch:
        return torch.cat([model.predict(chunk) for chunk in pixels.split(model.max_batch)])
    return model.predict(pixels)


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
    """Runs classification requests for every model of a ``ModelStore``, batched or not."""

    def __init__(self, store: ModelStore, settings: BatchingSettings, metrics: BatcherMetrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.Lock()
        self._batchers: dict[str, DynamicBatcher] = {}

    def _batcher(self, model: LoadedModel) -> DynamicBatcher:
        name = model.record.name
        if model.repository_version:
            name = f"{name}:{model.repository_version}"
        key = f"{name}@{model.version}"
        with self._lock:
            if key not in self._batchers:
                self._batchers[key] = DynamicBatcher(
                    name,
                    lambda pixels: logits_of(model, pixels),
                    max_size=min(self.settings.max_size, model.max_batch or self.settings.max_size),
                    max_delay=self.settings.max_delay,
                    queue_size=self.settings.queue_size,
                    metrics=self.metrics,
                )
            return self._batchers[key]

    def run(
        self,
        model: LoadedModel,
        pixels: torch.Tensor,
        *,
        deadline: float | None,
        is_active: Callable[[], bool],
    ) -> list[ImageResult]:
        """Logits for every image of ``pixels`` (N, 3, H, W). Raises ``QueueFull`` or ``Cancelled``."""
        if not self.settings.enabled:
            results: list[ImageResult] = []
            for chunk in pixels.split(self.settings.max_size):
                start = time.monotonic()
                logits = logits_of(model, chunk).numpy()
                seconds = time.monotonic() - start
                results.extend(ImageResult(row, len(chunk), 0.0, seconds) for row in logits)
            return results
        items = self._batcher(model).submit(pixels, deadline=deadline, is_active=is_active)
        return [self._wait(item, deadline, is_active) for item in items]

    @staticmethod
    def _wait(item: Pending, deadline: float | None, is_active: Callable[[], bool]) -> ImageResult:
        while not item.done.wait(0.05):
            if not is_active() or (deadline is not None and time.monotonic() >= deadline):
                break
        if item.dropped or not item.done.is_set():
            raise Cancelled(f"the request was dropped before computing ({item.dropped or 'stopped waiting'})")
        if item.error is not None:
            raise item.error
        assert item.logits is not None
        return ImageResult(item.logits.numpy(), item.batch_size, item.queue_seconds, item.inference_seconds)

    def close(self) -> None:
        with self._lock:
            for batcher in self._batchers.values():
                batcher.close()
