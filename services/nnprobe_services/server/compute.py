"""The bounded compute pool every async server runs its CPU/GPU work in.

Handlers are coroutines on the event loop; anything that computes (PyTorch, NumPy, image decoding) runs here,
in at most ``workers`` threads with at most ``queue`` more calls waiting. One call over that answers
RESOURCE_EXHAUSTED at once, naming the limit, instead of queueing without bound. Health, reflection and
bookkeeping RPCs never come here, so they answer while the pool is saturated.

Each call gets a ``StopSignal`` that is set when the client cancels, its deadline passes or the server
drains; the core polls it between steps and raises ``Cancelled``. A cancelled call keeps its place in the
count until its thread has really returned, so the bound holds for threads, not just for coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from nnprobe_services.errors import Cancelled, ResourceExhausted, StopSignal

log = logging.getLogger("nnprobe.compute")

T = TypeVar("T")

#: Sentinel that ends a stream of items handed from a worker thread to the event loop.
_END = object()


def default_workers(device_type: str) -> int:
    """Threads that suit the device: on CPU as many as cores (PyTorch parallelises inside each op, so more
    threads only contend), at most 8; on a GPU 4, enough to overlap host work with kernels."""
    if device_type == "cuda":
        return 4
    return max(1, min(8, os.cpu_count() or 1))


class ComputePool:
    """A thread pool with a hard bound on running plus waiting calls.

    ``workers`` threads run calls; up to ``queue`` more wait for a thread. ``run``/``stream`` beyond that
    raise ``ResourceExhausted`` before anything starts. ``name`` prefixes thread names and messages.
    """

    def __init__(self, workers: int, queue: int, *, name: str = "compute") -> None:
        if workers <= 0 or queue < 0:
            raise ValueError(f"workers must be > 0 and queue >= 0, got {workers} and {queue}")
        self.workers = workers
        self.queue = queue
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}")
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._admitted = 0
        self._running = 0
        self._signals: set[StopSignal] = set()

    @property
    def limit(self) -> int:
        """Calls admitted at once: running plus waiting."""
        return self.workers + self.queue

    @property
    def admitted(self) -> int:
        """Calls running or waiting now."""
        return self._admitted

    def _admit(self) -> StopSignal:
        with self._lock:
            if self._admitted >= self.limit:
                raise ResourceExhausted(
                    f"the server is at its compute limit: {self.workers} running and {self.queue} waiting "
                    f"(compute_workers={self.workers}, compute_queue={self.queue}); retry later"
                )
            self._admitted += 1
            stop = StopSignal()
            self._signals.add(stop)
            return stop

    def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` counted as running until it returns (counted by the thread itself, so the count
        stays right after the event loop has stopped)."""
        with self._lock:
            self._running += 1
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._running -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> int:
        """Wait (at most ``timeout`` seconds) until no thread is computing; the number still computing."""
        with self._idle:
            self._idle.wait_for(lambda: self._running == 0, timeout)
            return self._running

    def _release(self, stop: StopSignal) -> None:
        with self._lock:
            self._admitted -= 1
            self._signals.discard(stop)

    def _finished(self, future: asyncio.Future, stop: StopSignal) -> None:
        """A call's thread returned: free its place; read its outcome so an abandoned one is not logged."""
        self._release(stop)
        if not future.cancelled():
            future.exception()

    def stop_all(self, reason: str = "the server is shutting down") -> None:
        """Set the stop signal of every admitted call (used when the server drains)."""
        with self._lock:
            signals = list(self._signals)
        for stop in signals:
            stop.set(reason)

    def shutdown(self) -> None:
        """Stop every call and stop accepting new ones; threads end as their cores notice."""
        self.stop_all()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, context: grpc.aio.ServicerContext | None, fn: Callable[[StopSignal], T]) -> T:
        """``fn(stop)`` in a worker thread; its result, or the exception it raised.

        ``stop`` is set when the client cancels (this coroutine is cancelled), when the call's deadline
        passes, or when the server drains. Raises ``ResourceExhausted`` when the pool is full.
        """
        stop = self._admit()
        loop = asyncio.get_running_loop()
        timer = _deadline_timer(loop, context, stop)
        try:
            future = loop.run_in_executor(self._executor, self._in_thread, _labelled, fn, stop)
        except RuntimeError:  # executor shut down
            self._release(stop)
            raise Cancelled("the server is shutting down") from None
        future.add_done_callback(lambda f: self._finished(f, stop))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set("the client cancelled")
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def stream(
        self, context: grpc.aio.ServicerContext | None, fn: Callable[[StopSignal], Iterator[T]]
    ) -> AsyncIterator[T]:
        """Iterate the generator ``fn(stop)`` in a worker thread, yielding its items on the event loop.

        The consumer holds no thread while it waits. When the consumer stops early (client gone, an
        exception, ``aclose``) the signal is set and the generator is closed in its thread.
        """
        stop = self._admit()
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()
        timer = _deadline_timer(loop, context, stop)

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
                loop.call_soon_threadsafe(items.put_nowait, item)

        try:
            future = loop.run_in_executor(self._executor, self._in_thread, _produce, fn, stop, put)
        except RuntimeError:
            self._release(stop)
            raise Cancelled("the server is shutting down") from None
        future.add_done_callback(lambda f: self._finished(f, stop))
        try:
            while True:
                kind, value = await items.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            if not future.done():
                stop.set("the client cancelled")
            if timer is not None:
                timer.cancel()


def _produce(
    fn: Callable[[StopSignal], Iterator[T]], stop: StopSignal, put: Callable[[tuple[str, Any]], None]
) -> None:
    """Run the generator ``fn(stop)`` to its end or until ``stop`` is set, handing ``("item", x)`` for each
    item, then ``("end", _END)``, or ``("error", exception)`` for the consumer to re-raise."""
    try:
        generator = fn(stop)
        try:
            for item in generator:
                put(("item", item))
                if stop.is_set():
                    break
        finally:
            generator.close()  # type: ignore[attr-defined]
        put(("end", _END))
    except Cancelled as error:
        put(("error", _why(error, stop)))
    except BaseException as error:  # handed to the consumer, which re-raises it
        put(("error", error))


def _why(error: Cancelled, stop: StopSignal) -> Cancelled:
    """``error`` marked as a deadline when the signal that stopped the core was the call's deadline: cores
    raise their own ``Cancelled`` (saying how far they got) without knowing why they were asked to stop."""
    if stop.is_set() and stop.deadline:
        error.deadline = True
    return error


def _labelled(fn: Callable[[StopSignal], T], stop: StopSignal) -> T:
    try:
        return fn(stop)
    except Cancelled as error:
        raise _why(error, stop) from None


def _deadline_timer(
    loop: asyncio.AbstractEventLoop, context: grpc.aio.ServicerContext | None, stop: StopSignal
) -> asyncio.TimerHandle | None:
    """Set ``stop`` (as a deadline) when the call's deadline passes."""
    remaining = context.time_remaining() if context is not None else None
    if remaining is None:
        return None
    return loop.call_later(max(0.0, remaining), lambda: stop.set("the deadline passed", deadline=True))


__all__ = ["ComputePool", "default_workers"]
