"""Dynamic batching, in the manner of Triton's dynamic batcher.

Requests put their images into a model's queue; one worker thread per model takes the oldest image,
drops images whose request has been cancelled or whose deadline has passed (they are never computed), runs
one forward pass over the rest and hands each image its row of logits. A full queue refuses new images
(``QueueFull``).

The batching delay applies only under concurrent demand. A request that finds the queue empty and no
forward pass in flight runs at once, with whatever else is queued by then (a lone caller never waits for
company that is not coming). A request that arrives while images are queued or a batch is computing waits
until the batch holds ``max_size`` images or the oldest image has waited ``max_delay`` seconds.

Each image's ``future`` (a ``concurrent.futures.Future``) resolves to the image itself once its logits,
error or drop reason is known, so an asyncio handler can await it (``asyncio.wrap_future``) without holding
a thread while it waits; only the batcher's own thread runs the model.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nnprobe_services.errors import ResourceExhausted

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class QueueFull(ResourceExhausted):
    """The queue cannot take the images now (RESOURCE_EXHAUSTED). ``field`` names the request field that
    carried the images: ``images`` (``Classify``) unless the caller says otherwise."""

    def __init__(self, message: str, *, field: str = "images") -> None:
        super().__init__(message, field=field)


class BatcherMetrics:
    """Batch sizes, queue delays, queue depth, computed and dropped images, per model."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "nnprobe_batch_size",
            "Images per batched forward pass.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_delay = Histogram(
            "nnprobe_batch_queue_delay_seconds",
            "Seconds an image waited in the batching queue.",
            ["model"],
            buckets=DELAY_BUCKETS,
            registry=registry,
        )
        self.queued = Gauge(
            "nnprobe_batch_queue_images", "Images waiting in the queue.", ["model"], registry=registry
        )
        self.computed = Counter(
            "nnprobe_batch_images_computed",
            "Images computed by batched forward passes.",
            ["model"],
            registry=registry,
        )
        self.dropped = Counter(
            "nnprobe_batch_images_dropped",
            "Images dropped from the queue before computing, by reason (deadline, cancelled).",
            ["model", "reason"],
            registry=registry,
        )


_metrics_lock = threading.Lock()
_metrics: dict[int, BatcherMetrics] = {}


def batcher_metrics(registry: CollectorRegistry) -> BatcherMetrics:
    """The batcher metrics registered in ``registry`` (created once per registry)."""
    with _metrics_lock:
        if id(registry) not in _metrics:
            _metrics[id(registry)] = BatcherMetrics(registry)
        return _metrics[id(registry)]


@dataclass(eq=False)
class Pending:
    """One image in flight: (3, H, W) ``pixels``; ``deadline`` in the batcher's clock (``time.monotonic()``
    by default) or None. ``company``: the image arrived under concurrent demand, so its batch may wait
    ``max_delay`` for more images; otherwise it runs as soon as the worker takes it.

    ``future`` resolves to this object once ``logits`` ((classes,) float32), ``error`` or ``dropped``
    (``deadline``, ``cancelled`` or ``shutdown``) is known. It is marked running from the start, so a waiter
    that gives up cannot cancel it under the batcher's feet.
    """

    pixels: torch.Tensor
    deadline: float | None
    is_active: Callable[[], bool]
    enqueued: float = field(default_factory=time.monotonic)
    company: bool = True
    future: Future = field(default_factory=Future)
    logits: torch.Tensor | None = None
    error: BaseException | None = None
    dropped: str = ""
    batch_size: int = 0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.future.set_running_or_notify_cancel()

    def settle(self) -> None:
        """Hand the outcome to whoever waits on ``future``."""
        self.future.set_result(self)


class DynamicBatcher:
    """Gathers images for one model into batches; ``forward`` maps (N, 3, H, W) to (N, classes).

    ``clock`` (default ``time.monotonic``) measures deadlines, queue delays and inference time.
    """

    def __init__(
        self,
        name: str,
        forward: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_size: int,
        max_delay: float,
        queue_size: int,
        metrics: BatcherMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.clock = clock
        self.forward = forward
        self.max_size = max_size
        self.max_delay = max_delay
        self.queue_size = queue_size
        self.metrics = metrics
        self._queue: deque[Pending] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._in_flight = False  # a batch is being computed
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(
        self,
        images: torch.Tensor,
        *,
        deadline: float | None,
        is_active: Callable[[], bool],
        field: str = "images",
    ) -> list[Pending]:
        """Queue every image of ``images`` (N, 3, H, W); all or none. ``deadline``: in the batcher's clock.
        ``QueueFull`` names ``field``, the request field that carried the images."""
        with self._cond:
            now = self.clock()
            company = bool(self._queue) or self._in_flight
            items = [Pending(image, deadline, is_active, now, company=company) for image in images]
            if self._closed:
                raise QueueFull("the batcher is shutting down", field=field)
            if len(self._queue) + len(items) > self.queue_size:
                raise QueueFull(
                    f"{len(self._queue)} images are queued for {self.name}; {len(items)} more would exceed "
                    f"the queue size {self.queue_size}",
                    field=field,
                )
            self._queue.extend(items)
            self.metrics.queued.labels(model=self.name).set(len(self._queue))
            self._cond.notify()
        return items

    def close(self) -> None:
        """Stop the worker; images still queued are settled as dropped (``shutdown``), never computed."""
        with self._cond:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self.metrics.queued.labels(model=self.name).set(0)
            self._cond.notify()
        for item in left:
            item.dropped = "shutdown"
            item.settle()

    def _take(self) -> list[Pending]:
        """Wait for the oldest image; when it came with company, also for a full batch or the oldest
        image's delay to pass. The batch taken is in flight until ``_idle``."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            if self._queue[0].company:
                flush_at = self._queue[0].enqueued + self.max_delay
                while len(self._queue) < self.max_size and not self._closed:
                    remaining = flush_at - self.clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            batch = [self._queue.popleft() for _ in range(min(self.max_size, len(self._queue)))]
            self._in_flight = True
            self.metrics.queued.labels(model=self.name).set(len(self._queue))
            return batch

    def _idle(self) -> None:
        """The batch in flight is done: a request arriving from now on to an empty queue runs at once.
        Called before its images are settled, so a caller's next request already counts as alone."""
        with self._cond:
            self._in_flight = False

    def _drop_stale(self, batch: list[Pending]) -> list[Pending]:
        now = self.clock()
        live = []
        for item in batch:
            if item.deadline is not None and now >= item.deadline:
                item.dropped = "deadline"
            elif not item.is_active():
                item.dropped = "cancelled"
            else:
                live.append(item)
                continue
            self.metrics.dropped.labels(model=self.name, reason=item.dropped).inc()
            item.settle()
        return live

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                if self._closed:
                    return
                continue
            self._compute(self._drop_stale(batch))

    def _compute(self, batch: list[Pending]) -> None:
        """One forward pass over ``batch`` (may be empty); each image gets its row, or the error."""
        if not batch:
            self._idle()
            return
        start = self.clock()
        try:
            logits = self.forward(torch.stack([item.pixels for item in batch]))
        except Exception as error:  # handed to each waiting request, which reports it
            self._idle()
            for item in batch:
                item.error = error
                item.settle()
            return
        seconds = self.clock() - start
        self.metrics.batch_size.labels(model=self.name).observe(len(batch))
        self.metrics.computed.labels(model=self.name).inc(len(batch))
        self._idle()
        for row, item in zip(logits, batch, strict=True):
            item.logits = row
            item.batch_size = len(batch)
            item.queue_seconds = start - item.enqueued
            item.inference_seconds = seconds
            self.metrics.queue_delay.labels(model=self.name).observe(item.queue_seconds)
            item.settle()
