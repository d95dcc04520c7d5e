"""Client-side load balancing over two real server processes; the client survives one stopping."""

from __future__ import annotations

import re
import signal
import sys
import urllib.request

import pytest
from nnprobe import AttentionClient

pytestmark = pytest.mark.system
METHOD = "/nnprobe.attention.v1.AttentionService/CheckFeedForwardEquivalence"


def served(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf'nnprobe_requests_total{{code="OK",method="{re.escape(METHOD)}"}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("form", ["ip list", "host list"])
def test_calls_spread_over_replicas_and_survive_one_stopping(tmp_path, form, free_port, server_processes):
    ports = [free_port(), free_port()]
    metrics = [free_port(), free_port()]
    procs = [
        server_processes.start(
            [sys.executable, "-m", "nnprobe_services.attention", "--port", str(p), "--metrics-port", str(m)],
            tmp_path,
        )
        for p, m in zip(ports, metrics, strict=True)
    ]
    host = "127.0.0.1" if form == "ip list" else "localhost"
    address = ",".join(f"{host}:{p}" for p in ports)
    try:
        for p in ports:
            with AttentionClient(f"127.0.0.1:{p}") as probe:
                probe.wait_until_ready(timeout=60)
        with AttentionClient(address, timeout=30) as client:
            client.wait_until_ready(timeout=30)
            for _ in range(20):
                assert client.check_feed_forward_equivalence(widths=[4, 8, 4], timing_repeats=1).equivalent
            counts = [served(m) for m in metrics]
            assert sum(counts) == 20 and min(counts) >= 5, counts  # round robin: both replicas work
            procs[0].send_signal(signal.SIGTERM)
            procs[0].wait(timeout=60)
            for _ in range(10):  # the remaining replica takes every call
                assert client.check_feed_forward_equivalence(widths=[4, 8, 4], timing_repeats=1).equivalent
            assert served(metrics[1]) - counts[1] == 10
    finally:
        for proc in procs:
            server_processes.stop(proc)
