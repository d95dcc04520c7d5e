"""The concurrency limit: exactly max_concurrent_rpcs calls are handled at once, the next is refused."""

from __future__ import annotations

import threading

import grpc
import pytest
from nnprobe import AttentionClient, NnprobeError

from tests.conftest import start_server


def test_calls_over_the_limit_are_refused_and_calls_at_the_limit_are_not(tmp_path, monkeypatch):
    from nnprobe_services.attention import checks

    entered = threading.Semaphore(0)
    release = threading.Event()
    real = checks.check_feed_forward

    def blocking(*args, **kwargs):
        entered.release()
        release.wait(timeout=60)
        return real(*args, **kwargs)

    monkeypatch.setattr(checks, "check_feed_forward", blocking)
    server, address = start_server("attention", tmp_path, max_concurrent_rpcs=2, workers=4)
    results: list[bool] = []
    try:
        with AttentionClient(address, timeout=60) as client:
            threads = [
                threading.Thread(
                    target=lambda: results.append(
                        client.check_feed_forward_equivalence(widths=[4, 4]).equivalent
                    )
                )
                for _ in range(2)
            ]
            for t in threads:
                t.start()
            for _ in threads:
                assert entered.acquire(timeout=60)  # both calls are inside the server: the limit is reached
            with pytest.raises(NnprobeError) as refused:
                client.check_feed_forward_equivalence(widths=[4, 4])
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "busy: 2 calls are being handled" in refused.value.message
            assert client.health() == "SERVING"  # health checks do not count
            release.set()
            for t in threads:
                t.join(timeout=60)
            assert results == [True, True]
            monkeypatch.setattr(checks, "check_feed_forward", real)
            for _ in range(20):  # one client calling again at once never trips the limit
                assert client.check_feed_forward_equivalence(widths=[4, 4], timing_repeats=1).equivalent
    finally:
        release.set()
        server.shutdown(0).wait()
