"""The server's two bounds, measured on the server itself.

``max_concurrent_rpcs`` counts open calls: exactly that many are handled at once and the next is refused.
The compute pool (``compute_workers`` running + ``compute_queue`` waiting) answers RESOURCE_EXHAUSTED at once,
naming both settings, when it is full, while health and bookkeeping RPCs still answer. A client that cancels
``CheckFeedForwardEquivalence`` stops its timing repeats: the server's ``Cancelled`` says how far it got and
the pool gets its thread back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable

import grpc
import pytest
from nnprobe import AttentionClient, NnprobeError
from nnprobe.api.attention.v1 import attention_pb2, attention_pb2_grpc

#: Hang guard for waits on server-side evidence; never a pass/fail threshold.
WAIT_SECONDS = 120.0


def wait_until(condition: Callable[[], object], what: str) -> None:
    """Poll ``condition`` until it is true; fail (naming ``what``) after the hang guard."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def blocked_feed_forward(monkeypatch):
    """Make ``checks.check_feed_forward`` wait for ``release``; ``entered`` counts calls inside it."""
    from nnprobe_services.attention import checks

    entered = threading.Semaphore(0)
    release = threading.Event()
    real = checks.check_feed_forward

    def blocking(*args, **kwargs):
        entered.release()
        release.wait(timeout=WAIT_SECONDS)
        return real(*args, **kwargs)

    monkeypatch.setattr(checks, "check_feed_forward", blocking)
    yield entered, release
    release.set()


def test_open_calls_over_the_limit_are_refused_and_calls_at_the_limit_are_not(
    server_factory, blocked_feed_forward
):
    entered, release = blocked_feed_forward
    _, address = server_factory("attention", max_concurrent_rpcs=2, compute_workers=4)
    results: list[bool] = []
    with AttentionClient(address, timeout=60) as client:

        def call() -> None:
            results.append(client.check_feed_forward_equivalence(widths=[4, 4], timing_repeats=1).equivalent)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in threads:
            assert entered.acquire(timeout=60)  # both calls are inside the server: the limit is reached
        with pytest.raises(NnprobeError) as refused:
            client.check_feed_forward_equivalence(widths=[4, 4])
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 calls are open" in refused.value.message and "max_concurrent_rpcs" in refused.value.message
        assert client.health() == "SERVING"  # health checks do not count
        release.set()
        for t in threads:
            t.join(timeout=60)
        assert results == [True, True]
        for _ in range(20):  # one client calling again at once never trips the limit
            assert client.check_feed_forward_equivalence(widths=[4, 4], timing_repeats=1).equivalent


def saturate(server, release: threading.Event) -> list:
    """Fill ``server``'s compute pool (workers running, queue waiting) with calls that wait for ``release``;
    return their futures once the pool counts every one of them."""

    def hold(stop) -> str:
        release.wait(timeout=WAIT_SECONDS)
        return "released"

    futures = [
        asyncio.run_coroutine_threadsafe(server.compute.run(None, hold), server.loop)
        for _ in range(server.compute.limit)
    ]
    wait_until(lambda: server.compute.admitted == server.compute.limit, "the pool to fill")
    return futures


def test_a_full_compute_pool_refuses_at_once_while_health_answers(server_factory):
    server, address = server_factory("attention", compute_workers=1, compute_queue=2)
    release = threading.Event()
    try:
        held = saturate(server, release)
        with AttentionClient(address, timeout=60) as client:
            with pytest.raises(NnprobeError) as refused:
                client.check_permutation_equivariance(sequence_length=3, model_dim=4)
            # Refused while every held call is still held: the refusal did not wait for a place.
            assert not release.is_set() and server.compute.admitted == 3
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            message = refused.value.message
            assert "compute_workers=1" in message and "compute_queue=2" in message, message
            assert client.health() == "SERVING"
            release.set()
            assert [f.result(60) for f in held] == ["released"] * 3
            assert client.check_permutation_equivariance(sequence_length=3, model_dim=4).holds
    finally:
        release.set()


@pytest.mark.parametrize(
    ("service", "bookkeeping"),
    [
        ("vision", lambda client: [m.name for m in client.list_models()]),
        ("sequence", lambda client: client.list_jobs()),
    ],
)
def test_bookkeeping_answers_while_the_compute_pool_is_full(server_factory, ptb_dir, service, bookkeeping):
    from nnprobe import SequenceClient, VisionClient

    overrides = {"sequence": {"ptb_dir": ptb_dir, "ptb_download_timeout": 0}}.get(service, {})
    server, address = server_factory(service, compute_workers=1, compute_queue=0, **overrides)
    release = threading.Event()
    client_class = {"vision": VisionClient, "sequence": SequenceClient}[service]
    try:
        with client_class(address, timeout=60) as client:
            before = bookkeeping(client)
            saturate(server, release)
            assert client.health() == "SERVING"
            assert bookkeeping(client) == before
            assert not release.is_set() and server.compute.admitted == 1
    finally:
        release.set()


def repeats_done(stops: list[str]) -> tuple[int, int] | None:
    """(done, total) of the last "stopped after N of M timing repeats", if one was raised."""
    for message in reversed(stops):
        match = re.search(r"stopped after (\d+) of (\d+) timing repeats", message)
        if match:
            return int(match.group(1)), int(match.group(2))
    return None


#: A comparison whose 2 x 1000 timing repeats take minutes on a CPU (about 1 GFLOP per forward pass).
SLOW_FEED_FORWARD = attention_pb2.CheckFeedForwardEquivalenceRequest(
    widths=[256, 1024, 256], batch_size=8, sequence_length=128, timing_repeats=1000
)


@pytest.fixture
def forward_passes(monkeypatch) -> threading.Event:
    """Count the server's forward passes through either stack; the event is set once the timing repeats
    are under way (the two checked passes, then four timed ones)."""
    from nnprobe_services.attention import checks

    real = checks.run_stack
    count = [0]
    timing = threading.Event()

    def counted(*args, **kwargs):
        count[0] += 1
        if count[0] >= 6:
            timing.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(checks, "run_stack", counted)
    return timing


@pytest.mark.parametrize("ending", ["cancel", "deadline"])
def test_ending_a_feed_forward_check_stops_its_timing_repeats(
    server_factory, stops, forward_passes, caplog, ending
):
    caplog.set_level(logging.DEBUG, logger="nnprobe.requests")
    server, address = server_factory("attention")
    with grpc.insecure_channel(address) as channel:
        stub = attention_pb2_grpc.AttentionServiceStub(channel)
        if ending == "cancel":
            future = stub.CheckFeedForwardEquivalence.future(SLOW_FEED_FORWARD, timeout=600)
            wait_until(forward_passes.is_set, "the timing repeats to start")
            future.cancel()
            expected = "CheckFeedForwardEquivalence CANCELLED"
        else:
            with pytest.raises(grpc.RpcError) as info:
                stub.CheckFeedForwardEquivalence(SLOW_FEED_FORWARD, timeout=2)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            expected = "CheckFeedForwardEquivalence DEADLINE_EXCEEDED"
        wait_until(lambda: expected in caplog.text, f"the log line {expected!r}")
        wait_until(lambda: repeats_done(stops) is not None, "the timing loop to stop")
        wait_until(lambda: server.compute.admitted == 0, "the pool to get its thread back")
    done, total = repeats_done(stops)  # type: ignore[misc]
    assert total == 1000 and done < total
    if ending == "cancel":  # cancelled inside the loop: the repeats already timed were kept count of
        assert done >= 4
    print(f"CheckFeedForwardEquivalence {ending}: server stopped after {done} of {total} timing repeats")
