"""The compute pool: its bound, the stop signal it hands each call, and why a stopped call ended."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import Cancelled, ResourceExhausted
from nnprobe_services.server.compute import ComputePool

#: Hang guard for the loops below; never a pass/fail threshold.
GUARD_SECONDS = 60.0


class _Context:
    """The one thing the pool reads from a gRPC context: the seconds left before the deadline."""

    def __init__(self, remaining: float | None) -> None:
        self._deadline = None if remaining is None else time.monotonic() + remaining

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()


def _loop_until_stopped(stop) -> None:
    """A core's loop: it raises its own Cancelled saying how far it got, knowing nothing of why."""
    give_up = time.monotonic() + GUARD_SECONDS
    step = 0
    while time.monotonic() < give_up:
        if stop():
            raise Cancelled(f"stopped after {step} steps", done=step)
        step += 1
        time.sleep(0.001)
    raise AssertionError("the stop signal was never set")


def _generate_until_stopped(stop):
    give_up = time.monotonic() + GUARD_SECONDS
    step = 0
    while time.monotonic() < give_up:
        if stop():
            raise Cancelled(f"stopped after {step} steps", done=step)
        step += 1
        yield step
        time.sleep(0.001)
    raise AssertionError("the stop signal was never set")


def test_a_core_stopped_by_the_deadline_reports_a_deadline():
    pool = ComputePool(1, 0)

    async def main():
        return await pool.run(_Context(0.05), _loop_until_stopped)

    with pytest.raises(Cancelled) as error:
        asyncio.run(main())
    assert error.value.deadline and error.value.done is not None


def test_a_streamed_core_stopped_by_the_deadline_reports_a_deadline():
    pool = ComputePool(1, 0)

    async def main():
        return [item async for item in pool.stream(_Context(0.05), _generate_until_stopped)]

    with pytest.raises(Cancelled) as error:
        asyncio.run(main())
    assert error.value.deadline


def test_a_core_stopped_by_the_server_is_not_a_deadline():
    pool = ComputePool(1, 0)

    async def main():
        task = asyncio.ensure_future(pool.run(_Context(None), _loop_until_stopped))
        await asyncio.sleep(0.05)
        pool.stop_all()
        return await task

    with pytest.raises(Cancelled) as error:
        asyncio.run(main())
    assert not error.value.deadline


@settings(max_examples=20, deadline=None)
@given(workers=st.integers(1, 3), queue=st.integers(0, 3), extra=st.integers(1, 3))
def test_calls_beyond_workers_plus_queue_are_refused_at_once(workers, queue, extra):
    """Exactly ``workers + queue`` calls are admitted; every one beyond is refused, naming both limits."""
    pool = ComputePool(workers, queue)
    release = threading.Event()

    def hold(_stop) -> int:
        assert release.wait(GUARD_SECONDS)
        return 1

    async def main():
        tasks = [asyncio.ensure_future(pool.run(None, hold)) for _ in range(workers + queue + extra)]
        await asyncio.sleep(0)
        refused = [t for t in tasks if t.done() and isinstance(t.exception(), ResourceExhausted)]
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return refused, results

    refused, results = asyncio.run(main())
    assert len(refused) == extra
    assert "compute_workers" in str(refused[0].exception()) and "compute_queue" in str(refused[0].exception())
    assert sum(1 for r in results if r == 1) == workers + queue
    pool.shutdown()
