"""The dynamic batcher with a recording forward function: batching, limits, drops."""

import threading
import time

import pytest
import torch
from nnprobe_services.vision.classification.batcher import BatcherMetrics, DynamicBatcher, QueueFull
from prometheus_client import CollectorRegistry


class Recorder:
    """forward(x) = x summed per image; remembers the batch sizes it saw. ``gate`` can hold it."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.gate.wait()
        self.sizes.append(len(batch))
        return batch.flatten(1).sum(1, keepdim=True)


def _batcher(recorder, **kwargs):
    registry = CollectorRegistry()
    settings = {"max_size": 4, "max_delay": 0.2, "queue_size": 16, **kwargs}
    return DynamicBatcher("m", recorder, metrics=BatcherMetrics(registry), **settings), registry


def _always():
    return True


def _settled(item):
    """True once the batcher has settled ``item`` (its future resolves to the item itself)."""
    return item.future.result(timeout=30) is item


def test_images_are_gathered_up_to_the_max_size_and_split_back():
    recorder = Recorder()
    batcher, registry = _batcher(recorder, max_delay=30.0)
    items = batcher.submit(torch.arange(8.0).view(8, 1), deadline=None, is_active=_always)
    for item in items:
        assert _settled(item)
    assert recorder.sizes == [4, 4]  # full batches flushed without waiting for the delay
    assert [float(item.logits[0]) for item in items] == list(range(8))
    assert [item.batch_size for item in items[:4]] == [4] * 4
    assert registry.get_sample_value("nnprobe_batch_images_computed_total", {"model": "m"}) == 8
    batcher.close()


def test_a_partial_batch_waits_for_the_delay_only():
    recorder = Recorder()
    batcher, registry = _batcher(recorder, max_delay=0.05)
    (item,) = batcher.submit(torch.ones(1, 2), deadline=None, is_active=_always)
    assert _settled(item) and float(item.logits[0]) == 2 and recorder.sizes == [1]
    assert registry.get_sample_value("nnprobe_batch_size_count", {"model": "m"}) == 1
    batcher.close()


def test_concurrent_requests_share_a_batch():
    recorder = Recorder()
    batcher, _ = _batcher(recorder, max_delay=30.0)
    pending = []
    threads = [
        threading.Thread(
            target=lambda v=v: pending.extend(
                batcher.submit(torch.full((1, 1), v), deadline=None, is_active=_always)
            )
        )
        for v in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for item in pending:
        assert _settled(item)
    assert recorder.sizes == [4]
    assert sorted(float(p.logits[0]) for p in pending) == [0, 1, 2, 3]
    batcher.close()


def test_expired_and_cancelled_images_are_dropped_not_computed():
    recorder = Recorder()
    batcher, registry = _batcher(recorder, max_delay=0.3)
    expired = batcher.submit(torch.ones(1, 1), deadline=time.monotonic() + 0.05, is_active=_always)[0]
    gone = batcher.submit(torch.ones(1, 1), deadline=None, is_active=lambda: False)[0]
    live = batcher.submit(torch.full((1, 1), 7.0), deadline=None, is_active=_always)[0]
    for item in (expired, gone, live):
        assert _settled(item)
    assert (expired.dropped, expired.logits) == ("deadline", None)
    assert (gone.dropped, gone.logits) == ("cancelled", None)
    assert float(live.logits[0]) == 7 and recorder.sizes == [1]
    for reason in ("deadline", "cancelled"):
        assert (
            registry.get_sample_value("nnprobe_batch_images_dropped_total", {"model": "m", "reason": reason})
            == 1
        )
    batcher.close()


def test_a_full_queue_refuses_all_or_nothing():
    recorder = Recorder()
    recorder.gate.clear()
    batcher, registry = _batcher(recorder, max_size=1, max_delay=0.0, queue_size=2)
    first = batcher.submit(torch.ones(1, 1), deadline=None, is_active=_always)  # taken by the worker
    while registry.get_sample_value("nnprobe_batch_queue_images", {"model": "m"}) != 0:
        time.sleep(0.01)
    waiting = batcher.submit(torch.ones(2, 1), deadline=None, is_active=_always)
    with pytest.raises(QueueFull, match="2 images are queued for m; 1 more would exceed the queue size 2"):
        batcher.submit(torch.ones(1, 1), deadline=None, is_active=_always)
    recorder.gate.set()
    for item in first + waiting:
        assert _settled(item) and item.logits is not None
    batcher.close()


def test_forward_errors_reach_every_waiting_image():
    def broken(batch):
        raise RuntimeError("boom")

    batcher, _ = _batcher(broken, max_delay=0.0)
    items = batcher.submit(torch.ones(2, 1), deadline=None, is_active=_always)
    for item in items:
        assert _settled(item) and isinstance(item.error, RuntimeError)
    batcher.close()


def test_closing_settles_queued_images_as_dropped():
    recorder = Recorder()
    recorder.gate.clear()
    batcher, registry = _batcher(recorder, max_size=1, max_delay=0.0, queue_size=4)
    first = batcher.submit(torch.ones(1, 1), deadline=None, is_active=_always)[0]  # taken by the worker
    while registry.get_sample_value("nnprobe_batch_queue_images", {"model": "m"}) != 0:
        time.sleep(0.01)
    queued = batcher.submit(torch.ones(2, 1), deadline=None, is_active=_always)
    batcher.close()
    for item in queued:
        assert _settled(item) and (item.dropped, item.logits) == ("shutdown", None)
    assert not first.future.cancel()  # running from the start: a waiter cannot cancel it
    recorder.gate.set()
    assert _settled(first) and float(first.logits[0]) == 1
    assert recorder.sizes == [1]
