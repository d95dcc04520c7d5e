"""A ``grpc.Channel`` over several channels, one per address of a comma-separated list.

Each entry gets its own channel, resolved by gRPC whatever its address family (IPv4, IPv6, or a name with
A and AAAA records), and under TLS each server's certificate is checked against that entry's own host name.
Calls go round robin over the channels that are READY (all of them when none is); a channel that has lost
its connection is asked to reconnect when its turn comes, so a replica that returns is used again. A unary
call that ends UNAVAILABLE is tried on the other channels before the error is raised (within its deadline).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

_READY = grpc.ChannelConnectivity.READY
_CONNECTING = grpc.ChannelConnectivity.CONNECTING


class ChannelPool(grpc.Channel):
    """Round robin over ``channels`` (see the module docstring)."""

    def __init__(self, channels: Sequence[grpc.Channel]) -> None:
        self.channels = list(channels)
        self._states: list[grpc.ChannelConnectivity | None] = [None] * len(self.channels)
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._watchers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        for index, channel in enumerate(self.channels):
            watcher = self._watcher(index)
            self._watchers.append(watcher)
            channel.subscribe(watcher, try_to_connect=True)

    def _watcher(self, index: int) -> Callable[[grpc.ChannelConnectivity], None]:
        def update(state: grpc.ChannelConnectivity) -> None:
            self._states[index] = state

        return update

    def order(self) -> list[int]:
        """Channel indices to try, in order: the READY ones from the next turn on, then the others. A
        channel that is neither READY nor CONNECTING is asked to connect."""
        with self._lock:
            turn = next(self._counter)
        count = len(self.channels)
        rotation = [(turn + k) % count for k in range(count)]
        for index in rotation:
            if self._states[index] not in (_READY, _CONNECTING):
                self.channels[index].subscribe(_ignore, try_to_connect=True)
                self.channels[index].unsubscribe(_ignore)
        ready = [i for i in rotation if self._states[i] == _READY]
        return ready + [i for i in rotation if i not in ready]

    # -- grpc.Channel ---------------------------------------------------------------------------------
    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _FailoverCallable(self, [c.unary_unary(method, *args, **kwargs) for c in self.channels])

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _RoundRobinCallable(self, [c.unary_stream(method, *args, **kwargs) for c in self.channels])

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _RoundRobinCallable(self, [c.stream_unary(method, *args, **kwargs) for c in self.channels])

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _RoundRobinCallable(self, [c.stream_stream(method, *args, **kwargs) for c in self.channels])

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        raise NotImplementedError("subscribe to the pool's channels (ChannelPool.channels) one by one")

    def unsubscribe(self, callback: Any) -> None:
        raise NotImplementedError("unsubscribe from the pool's channels one by one")

    def close(self) -> None:
        for channel, watcher in zip(self.channels, self._watchers, strict=True):
            channel.unsubscribe(watcher)
            channel.close()

    def __enter__(self) -> ChannelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ignore(state: grpc.ChannelConnectivity) -> None:
    """A subscription that only asks a channel to connect."""


class _RoundRobinCallable:
    def __init__(self, pool: ChannelPool, callables: list[Any]) -> None:
        self._pool = pool
        self._callables = callables

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._callables[self._pool.order()[0]](*args, **kwargs)


class _FailoverCallable(_RoundRobinCallable):
    def __call__(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        started = time.monotonic()
        order = self._pool.order()
        for attempt, index in enumerate(order):
            left = None if timeout is None else timeout - (time.monotonic() - started)
            try:
                return self._callables[index](request, timeout=left, **kwargs)
            except grpc.RpcError as error:
                last = attempt == len(order) - 1
                if last or error.code() != grpc.StatusCode.UNAVAILABLE or (left is not None and left <= 0):
                    raise
        raise AssertionError("unreachable: a pool has at least one channel")
