"""The dynamic batcher with a recording forward function: batching policy, limits, drops."""

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


class FrozenClock:
    """A clock that moves only when told: delays cannot pass unless the test advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _batcher(recorder, **kwargs):
    registry = CollectorRegistry()
    settings = {"max_size": 4, "max_delay": 0.2, "queue_size": 16, **kwargs}
    return DynamicBatcher("m", recorder, metrics=BatcherMetrics(registry), **settings), registry


def _wait_taken(registry):
    """Until the worker has taken every queued image (it is then computing them)."""
    while registry.get_sample_value("nnprobe_batch_queue_images", {"model": "m"}) != 0:
        time.sleep(0.01)


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


def test_a_lone_request_runs_at_once_without_waiting_for_the_delay():
    # The clock never moves and the delay is an hour: only the lone-request rule can let it through.
    recorder, clock = Recorder(), FrozenClock()
    batcher, registry = _batcher(recorder, max_delay=3600.0, clock=clock)
    (item,) = batcher.submit(torch.ones(1, 2), deadline=None, is_active=_always)
    assert _settled(item) and float(item.logits[0]) == 2 and recorder.sizes == [1]
    assert (item.batch_size, item.queue_seconds) == (1, 0.0)
    assert registry.get_sample_value("nnprobe_batch_size_count", {"model": "m"}) == 1
    (again,) = batcher.submit(torch.full((1, 2), 2.0), deadline=None, is_active=_always)  # idle again
    assert _settled(again) and float(again.logits[0]) == 4 and recorder.sizes == [1, 1]
    batcher.close()


def test_a_lone_request_with_several_images_runs_them_together_then_the_rest():
    recorder = Recorder()
    batcher, _ = _batcher(recorder, max_delay=3600.0, clock=FrozenClock())
    items = batcher.submit(torch.arange(6.0).view(6, 1), deadline=None, is_active=_always)
    for item in items:
        assert _settled(item)
    assert recorder.sizes == [4, 2]
    assert [float(item.logits[0]) for item in items] == list(range(6))
    batcher.close()


def test_requests_arriving_while_a_batch_computes_coalesce():
    recorder, clock = Recorder(), FrozenClock()
    recorder.gate.clear()
    batcher, registry = _batcher(recorder, max_delay=3600.0, clock=clock)
    first = batcher.submit(torch.zeros(1, 1), deadline=None, is_active=_always)[0]
    _wait_taken(registry)  # the worker runs it alone and is held in its forward pass
    later = [batcher.submit(torch.full((1, 1), v), deadline=None, is_active=_always)[0] for v in (1, 2, 3, 4)]
    recorder.gate.set()
    for item in [first, *later]:
        assert _settled(item)
    assert recorder.sizes == [1, 4]  # a full batch of the four that came while the first computed
    assert [float(item.logits[0]) for item in later] == [1, 2, 3, 4]
    assert [item.batch_size for item in later] == [4] * 4
    batcher.close()


def test_under_demand_a_partial_batch_waits_for_the_delay():
    recorder, clock = Recorder(), FrozenClock()
    recorder.gate.clear()
    batcher, registry = _batcher(recorder, max_delay=10.0, clock=clock)
    first = batcher.submit(torch.zeros(1, 1), deadline=None, is_active=_always)[0]
    _wait_taken(registry)
    second = batcher.submit(torch.ones(1, 1), deadline=None, is_active=_always)[0]  # came under demand
    recorder.gate.set()
    assert _settled(first)
    third = batcher.submit(torch.full((1, 1), 2.0), deadline=None, is_active=_always)[0]
    assert not second.future.done()  # the delay has not passed on the clock: still waiting for company
    clock.now += 10.0
    fourth = batcher.submit(torch.full((1, 1), 3.0), deadline=None, is_active=_always)[0]  # wakes the worker
    for item in (second, third, fourth):
        assert _settled(item)
    # Second and third left together once the delay had passed on the clock; fourth joined them or
    # followed, depending on whether it arrived before the worker woke.
    assert second.batch_size == third.batch_size >= 2 and second.queue_seconds == 10.0
    assert recorder.sizes[0] == 1 and sum(recorder.sizes) == 4
    batcher.close()


def test_a_lone_image_gets_the_logits_it_gets_in_a_batch():
    """The same image through a real network, alone and in a batch of four: the lone result equals a direct
    one-image forward pass bitwise, and the batched row equals it up to float32 rounding of the batch size
    (the bound the service tests use for concurrent against sequential calls)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()

    def forward(batch):
        with torch.inference_mode():
            return net(batch)

    recorder = Recorder()

    def recorded(batch):
        recorder(batch)
        return forward(batch)

    images = torch.rand(4, 3, 16, 16)
    batcher, _ = _batcher(recorded, max_delay=3600.0, clock=FrozenClock())
    (alone,) = batcher.submit(images[:1], deadline=None, is_active=_always)
    assert _settled(alone) and alone.batch_size == 1
    together = batcher.submit(images, deadline=None, is_active=_always)
    for item in together:
        assert _settled(item) and item.batch_size == 4
    direct = forward(images[:1])[0]
    assert torch.equal(alone.logits, direct)
    assert float((together[0].logits - alone.logits).abs().max()) < 1e-4
    assert recorder.sizes == [1, 4]
    batcher.close()


def test_concurrent_requests_share_a_batch():
    recorder = Recorder()
    recorder.gate.clear()
    batcher, registry = _batcher(recorder, max_delay=30.0)
    first = batcher.submit(torch.zeros(1, 1), deadline=None, is_active=_always)[0]
    _wait_taken(registry)  # a batch in flight: the four requests below arrive under demand
    pending = []
    threads = [
        threading.Thread(
            target=lambda v=v: pending.extend(
                batcher.submit(torch.full((1, 1), v), deadline=None, is_active=_always)
            )
        )
        for v in range(1, 5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorder.gate.set()
    for item in [first, *pending]:
        assert _settled(item)
    assert recorder.sizes == [1, 4]
    assert sorted(float(p.logits[0]) for p in pending) == [1, 2, 3, 4]
    batcher.close()


def test_expired_and_cancelled_images_are_dropped_not_computed():
    recorder, clock = Recorder(), FrozenClock()
    recorder.gate.clear()
    batcher, registry = _batcher(recorder, max_delay=0.0, clock=clock)
    first = batcher.submit(torch.zeros(1, 1), deadline=None, is_active=_always)[0]
    _wait_taken(registry)  # the others queue behind the batch in flight
    expired = batcher.submit(torch.ones(1, 1), deadline=clock.now + 5.0, is_active=_always)[0]
    gone = batcher.submit(torch.ones(1, 1), deadline=None, is_active=lambda: False)[0]
    live = batcher.submit(torch.full((1, 1), 7.0), deadline=None, is_active=_always)[0]
    clock.now += 5.0  # the deadline passes while they wait
    recorder.gate.set()
    for item in (first, expired, gone, live):
        assert _settled(item)
    assert (expired.dropped, expired.logits) == ("deadline", None)
    assert (gone.dropped, gone.logits) == ("cancelled", None)
    assert float(live.logits[0]) == 7 and recorder.sizes == [1, 1]
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
