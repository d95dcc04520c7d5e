"""``watch_job(timeout=...)`` bounds the whole watch: reconnecting after UNAVAILABLE does not start the
deadline again, so a watch of a server that never comes back ends when the timeout passes, not when the
(longer) reconnection allowance does."""

from __future__ import annotations

import grpc
import pytest
from nnprobe import NnprobeError, SequenceClient


def test_the_timeout_bounds_the_watch_across_reconnections(free_port):
    # Nobody listens at the address, and the reconnection allowance far exceeds the suite's own hang guard:
    # only the watch's timeout can end this call in time.
    client = SequenceClient(f"127.0.0.1:{free_port()}")
    with client, pytest.raises(NnprobeError) as ended:
        list(client.watch_job("0" * 32, timeout=2.0, reconnect_seconds=3600.0))
    assert ended.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_without_a_timeout_the_reconnection_allowance_decides(free_port):
    client = SequenceClient(f"127.0.0.1:{free_port()}")
    with client, pytest.raises(NnprobeError) as ended:
        list(client.watch_job("0" * 32, reconnect_seconds=0.0))
    assert ended.value.code == grpc.StatusCode.UNAVAILABLE
