"""Load benchmark: N concurrent SDK clients against each real server process.

    .venv/bin/python bench/load.py [--seconds 5] [--clients 1 8 16 32 64] [--limit 16] [--long 0]

For each service and each N: requests/s, p50/p99/max latency, errors by status, and the server's RSS at start
and end. The servers run with --max-concurrent-rpcs LIMIT, so levels above it show how the overflow is
refused: cleanly with RESOURCE_EXHAUSTED, never UNAVAILABLE or INTERNAL. ``--long S`` adds one run of S
seconds at 8 clients per service and prints RSS every tenth of it (flat means no leak).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from nnprobe import AttentionClient, NnprobeError, SequenceClient, VisionClient
from nnprobe.vision import Layer

ALEXNET = [
    Layer("conv1", 11, 4, 0),
    Layer("pool1", 3, 2, 0, kind="pool"),
    Layer("conv2", 5, 1, 2),
    Layer("pool2", 3, 2, 0, kind="pool"),
    Layer("conv3", 3, 1, 1),
    Layer("conv4", 3, 1, 1),
    Layer("conv5", 3, 1, 1),
    Layer("pool5", 3, 2, 0, kind="pool"),
]
INPUTS = np.random.default_rng(0).standard_normal((10, 2, 4))


def vision_call(client: Any) -> None:
    client.compute_receptive_field(ALEXNET, input_size=(227, 227), units=[("conv2", 1, 1)])


def sequence_call(client: Any) -> None:
    client.run_recurrent(INPUTS, cell="lstm", hidden_size=8, seed=0)


def attention_call(client: Any) -> None:
    client.check_feed_forward_equivalence(
        widths=[16, 32, 16], batch_size=2, sequence_length=4, timing_repeats=1
    )


SERVICES: dict[str, tuple[type, Callable[[Any], None]]] = {
    "vision": (VisionClient, vision_call),
    "sequence": (SequenceClient, sequence_call),
    "attention": (AttentionClient, attention_call),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_level(address: str, service: str, clients: int, seconds: float) -> dict[str, Any]:
    client_type, call = SERVICES[service]
    latencies: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]
    go = threading.Event()

    def worker() -> None:
        with client_type(address, timeout=60) as client:
            client.wait_until_ready(timeout=60)  # connect outside the measured window
            start_gate.wait()
            go.wait()
            mine: list[float] = []
            codes: collections.Counter[str] = collections.Counter()
            while time.perf_counter() < stop_at[0]:
                begin = time.perf_counter()
                try:
                    call(client)
                    codes["OK"] += 1
                    mine.append(time.perf_counter() - begin)
                except NnprobeError as error:
                    codes[error.code.name] += 1
            with lock:
                latencies.extend(mine)
                statuses.update(codes)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()  # every client connected
    began = time.perf_counter()
    stop_at[0] = began + seconds
    go.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    ok = sorted(latencies)
    return {
        "rps": len(ok) / elapsed,
        "p50": statistics.median(ok) * 1e3 if ok else float("nan"),
        "p99": ok[min(len(ok) - 1, int(0.99 * len(ok)))] * 1e3 if ok else float("nan"),
        "max": ok[-1] * 1e3 if ok else float("nan"),
        "errors": {k: v for k, v in statuses.items() if k != "OK"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--limit", type=int, default=16, help="server --max-concurrent-rpcs")
    parser.add_argument("--long", type=float, default=0.0, help="seconds of a leak run at 8 clients")
    parser.add_argument("--services", nargs="+", default=list(SERVICES), choices=list(SERVICES))
    args = parser.parse_args()
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for service in args.services:
            port = free_port()
            env = {**os.environ, "NNPROBE_DATA_DIR": tmp, "NNPROBE_CACHE_DIR": tmp}
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    f"nnprobe_services.{service}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--max-concurrent-rpcs",
                    str(args.limit),
                    "--workers",
                    str(args.limit),
                    "--log-level",
                    "warning",
                    "--device",
                    "cpu",
                ],
                env=env,
            )
            address = f"127.0.0.1:{port}"
            try:
                client_type, _ = SERVICES[service]
                with client_type(address) as probe:
                    probe.wait_until_ready(timeout=120)
                print(f"\n{service} (server limit {args.limit} concurrent RPCs, {args.seconds:g}s per level)")
                print(
                    f"  {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
                    f"{'RSS start':>10} {'RSS end':>8}  errors"
                )
                for clients in args.clients:
                    before = rss_mib(proc.pid)
                    r = run_level(address, service, clients, args.seconds)
                    after = rss_mib(proc.pid)
                    errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "none"
                    unexpected = set(r["errors"]) - {"RESOURCE_EXHAUSTED"}
                    if unexpected or (clients <= args.limit and r["errors"]):
                        bad += 1
                    print(
                        f"  {clients:>7} {r['rps']:>8.1f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['max']:>8.2f} "
                        f"{before:>8.0f}Mi {after:>6.0f}Mi  {errors}"
                    )
                if args.long > 0:
                    samples, served = [], 0.0
                    for _ in range(10):
                        served += run_level(address, service, 8, args.long / 10)["rps"] * args.long / 10
                        samples.append(rss_mib(proc.pid))
                    print(
                        f"  leak run, 8 clients, {args.long:g}s, {served:.0f} requests: RSS MiB "
                        + " ".join(f"{s:.0f}" for s in samples)
                    )
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    print(
        "\nverdict:",
        "as designed (only RESOURCE_EXHAUSTED, and only above the limit)"
        if not bad
        else f"{bad} level(s) with unexpected errors",
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
