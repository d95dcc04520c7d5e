"""Classify with plain values (no gRPC): the model asked for (the server's default when none is named), its
``top_k`` and the image count are checked on the event loop (``plan``); the images are decoded and
preprocessed and the model loaded in a compute thread (``prepare``), which also classifies them when dynamic
batching is off; with batching, ``results`` awaits the model's batcher on the event loop, holding no thread.
Attacks resolve their models through the same ``model_name`` and ``top_k``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nnprobe_services.errors import InvalidArgument, NotFound, StopSignal
from nnprobe_services.server.config import ServerConfig
from nnprobe_services.vision.classification import classify
from nnprobe_services.vision.images import decode
from nnprobe_services.vision.models.registry import LoadedModel
from nnprobe_services.vision.models.store import ModelStore

#: Reads a request's images as plain values; called in a compute thread (raw pixel tensors may be large).
ImageReader = Callable[[], list[decode.ImageInput]]


@dataclass(frozen=True)
class ClassifyQuery:
    """A Classify request as plain values. ``model`` "" and ``top_k`` 0: the defaults; ``model_version`` 0:
    the model's default version; ``received``: when the request arrived (``time.monotonic()``)."""

    model: str
    model_version: int
    top_k: int
    image_count: int
    images: ImageReader
    names: list[str]
    skip_resize: bool
    return_logits: bool
    received: float


@dataclass(frozen=True)
class ClassifyPlan:
    """A checked query: the resolved model name and number of classes listed per image."""

    query: ClassifyQuery
    model: str
    top_k: int


@dataclass
class Prepared:
    """A Classify request after its compute-pool part: the model, its (N, 3, H, W) input, when the input
    was ready (``time.monotonic()``) and, without batching, the results."""

    model: LoadedModel
    pixels: torch.Tensor
    ready: float
    results: list[classify.ImageResult] | None


class Classification:
    """Classify's entry points over the models of ``models``; ``max_images``: images per request."""

    def __init__(
        self,
        models: ModelStore,
        classifier: classify.Classifier,
        limits: decode.ImageLimits,
        *,
        default_model: str,
        max_images: int,
    ) -> None:
        self.models = models
        self.classifier = classifier
        self.limits = limits
        self.default_model = default_model
        self.max_images = max_images

    def model_name(self, requested: str, field: str = "model") -> str:
        """The model a request names (``requested`` "" or blank: the server's default); ``NotFound`` on
        ``field``, listing the available models, when there is no such model."""
        name = requested.strip() or self.default_model
        if self.models.is_builtin(name):
            return name
        try:
            self.models.describe(name, field)
        except (NotFound, InvalidArgument):
            raise NotFound(
                f"no model {name!r}; the available models are {', '.join(self.models.names())}", field=field
            ) from None
        return name

    def top_k(self, requested: int, model: str) -> int:
        """Classes to list per image (``requested`` 0: 5), at most the model's number of classes."""
        classes = self.models.describe(model)[0].num_classes or 2**31 - 1  # 0: known once loaded
        top_k = requested or 5
        if not 1 <= top_k <= classes:
            raise InvalidArgument(f"must be in 1..{classes}, got {requested}", field="top_k")
        return top_k

    def plan(self, query: ClassifyQuery) -> ClassifyPlan:
        """The checks that need no compute, in the order clients know."""
        name = self.model_name(query.model)
        top_k = self.top_k(query.top_k, name)
        decode.count_images(query.image_count, "images", self.max_images)
        if query.model_version < 0:
            raise InvalidArgument(f"must be >= 0, got {query.model_version}", field="model_version")
        return ClassifyPlan(query, name, top_k)

    def prepare(self, plan: ClassifyPlan, stop: StopSignal) -> Prepared:
        """Decode and preprocess the images and load the model; classify them here without batching."""
        query = plan.query
        prep = self.models.describe(plan.model)[0].preprocessing
        pixels = decode.model_inputs(query.images(), prep, self.limits, skip_resize=query.skip_resize)
        model = classify.load_model(self.models, plan.model, query.model_version or None)
        ready = time.monotonic()
        results = None if self.classifier.batching else self.classifier.forward(model, pixels, stop)
        return Prepared(model, pixels, ready, results)

    async def results(
        self, prepared: Prepared, deadline: float | None, field: str = "images"
    ) -> list[classify.ImageResult]:
        """The prepared images' results: those ``prepare`` computed, else the model's batcher's (awaited
        until ``deadline``, ``time.monotonic()`` seconds). A full queue is ``QueueFull`` (RESOURCE_EXHAUSTED)
        on ``field``."""
        if prepared.results is not None:
            return prepared.results
        return await self.classifier.batched(prepared.model, prepared.pixels, deadline=deadline, field=field)


def deadline(remaining: float | None) -> float | None:
    """The ``time.monotonic()`` deadline of a call with ``remaining`` seconds left (None, or gRPC's huge
    value for a call without a deadline: None), at least 1 ms from now."""
    return None if remaining is None or remaining > 1e8 else time.monotonic() + max(remaining, 0.001)


def batching_settings(config: ServerConfig, device: torch.device) -> classify.BatchingSettings:
    """The dynamic batcher's settings: configured values, else 64 images / 2 ms on a GPU, 16 / 5 ms on CPU."""
    gpu = device.type == "cuda"
    delay_ms = config.vision.batch_max_delay_ms
    if delay_ms is None:
        delay_ms = 2.0 if gpu else 5.0
    return classify.BatchingSettings(
        enabled=config.vision.dynamic_batching,
        max_size=config.vision.batch_max_size or (64 if gpu else 16),
        max_delay=delay_ms / 1000.0,
        queue_size=config.vision.batch_queue_size,
    )
