"""Load benchmark: real server processes under open streams, a saturated compute pool and many clients.

    .venv/bin/python bench/load.py [--streams 200] [--samples 200] [--seconds 5] [--clients 1 8 16 32 64]
                                   [--limit 16] [--long 0] [--sections streams sweep]

``streams`` (sequence server, tiny corpus, one job training and one queued behind it): p50/p99 latency of
health, of a bookkeeping RPC (GetJob) and of a small compute RPC (RunRecurrent, T=10) with 0 and then N idle
WatchJob streams open on the queued job (the server's in-flight gauge confirms them), and with the compute
pool saturated by long calls (then the refusals, by status, and how long a refusal takes).

``sweep``: for each service and each number of concurrent SDK clients, requests/s, p50/p99/max latency,
errors by status and the server's RSS. The servers run with --max-concurrent-rpcs LIMIT and a compute pool
that admits as many, so levels above it show how the overflow is refused: cleanly with RESOURCE_EXHAUSTED,
never UNAVAILABLE or INTERNAL. ``--long S`` adds a run of S seconds at 8 clients printing RSS (flat: no leak).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from nnprobe import AttentionClient, NnprobeError, SequenceClient, VisionClient
from nnprobe.api.sequence.v1 import sequence_pb2, sequence_pb2_grpc
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
SMALL_INPUTS = np.random.default_rng(0).standard_normal((10, 2, 4))
#: Gradient flow through 1000 LSTM steps at 3 radii: seconds of compute, a small answer. These calls fill
#: the compute pool.
LONG_GRADIENTS = dict(cells=["lstm"], hidden_size=48, sequence_length=1000, spectral_radii=[0.9, 1.0, 1.1])
TINY_LM = dict(embed_size=16, hidden_size=32, batch_size=4, sequence_length=8, log_interval=50)
WATCH = "/nnprobe.sequence.v1.SequenceService/WatchJob"


def vision_call(client: Any) -> None:
    client.compute_receptive_field(ALEXNET, input_size=(227, 227), units=[("conv2", 1, 1)])


def sequence_call(client: Any) -> None:
    client.run_recurrent(SMALL_INPUTS, cell="lstm", hidden_size=8, seed=0)


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


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    if not seconds:
        return float("nan"), float("nan")
    ordered = sorted(seconds)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3


@contextmanager
def server_process(service: str, folder: str, *flags: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """A server process on a free port (CPU, warnings only); SIGTERM on exit."""
    port = free_port()
    args = [sys.executable, "-m", f"nnprobe_services.{service}", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "NNPROBE_DATA_DIR": folder, "NNPROBE_CACHE_DIR": folder}
    proc = subprocess.Popen([*args, "--log-level", "warning", "--device", "cpu", *flags], env=env)
    address = f"127.0.0.1:{port}"
    try:
        with SERVICES[service][0](address) as probe:
            probe.wait_until_ready(timeout=120)
        yield proc, address
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


# -- streams and saturation ---------------------------------------------------------------------------------
def timed(call: Callable[[], object], samples: int) -> dict[str, list[float]]:
    """Latencies (seconds) of ``samples`` sequential calls, by outcome (``OK`` or the status name)."""
    outcomes: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(samples):
        begin = time.perf_counter()
        try:
            call()
            code = "OK"
        except NnprobeError as error:
            code = error.code.name
        outcomes[code].append(time.perf_counter() - begin)
    return outcomes


def in_flight(metrics_port: int, method: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf'nnprobe_requests_in_flight{{method="{re.escape(method)}"}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def open_streams(address: str, job_id: str, count: int) -> tuple[list[grpc.Channel], list[Any]]:
    """``count`` WatchJob streams over 4 connections; nothing reads them (they stay idle on a queued job)."""
    channels = [
        grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(4)
    ]
    request = sequence_pb2.WatchJobRequest(job_id=job_id)
    calls = [sequence_pb2_grpc.SequenceServiceStub(channels[i % 4]).WatchJob(request) for i in range(count)]
    return channels, calls


def saturate(
    address: str, threads: int, stop: threading.Event
) -> tuple[list[threading.Thread], collections.Counter]:
    """``threads`` clients calling a long AnalyzeGradients back to back (10 ms pause after a refusal)."""
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def worker() -> None:
        with SequenceClient(address, timeout=300) as client:
            while not stop.is_set():
                try:
                    client.analyze_gradients(**LONG_GRADIENTS)
                    code = "OK"
                except NnprobeError as error:
                    code = error.code.name
                with lock:
                    outcomes[code] += 1
                if code != "OK":
                    stop.wait(0.01)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    return workers, outcomes


def measure(client: SequenceClient, job_id: str, samples: int) -> dict[str, dict[str, list[float]]]:
    return {
        "health": timed(client.health, samples),
        "GetJob": timed(lambda: client.get_job(job_id), samples),
        "RunRecurrent T=10": timed(lambda: sequence_call(client), samples),
    }


def print_rows(condition: str, results: dict[str, dict[str, list[float]]]) -> None:
    """One row per call: p50/p99 of the successful calls; other outcomes with their own p50."""
    for call, outcomes in results.items():
        p50, p99 = percentiles(outcomes.get("OK", []))
        others = [
            f"{code} {len(t)} (p50 {percentiles(t)[0]:.2f} ms)"
            for code, t in outcomes.items()
            if code != "OK"
        ]
        ok = len(outcomes.get("OK", []))
        print(f"  {condition:<28} {call:<18} {p50:>8.2f} {p99:>8.2f} {ok:>5}  {', '.join(others) or '-'}")


def streams_section(args: argparse.Namespace, folder: str) -> int:
    metrics = free_port()
    workers, queue = 2, 2
    flags = ["--metrics-port", str(metrics), "--compute-workers", str(workers), "--compute-queue", str(queue)]
    with (
        server_process("sequence", folder, *flags) as (_, address),
        SequenceClient(address, timeout=60) as lm,
    ):
        text = "".join(" ".join(f"w{(3 * k + j) % 20}" for j in range(6)) + "\n" for k in range(400))
        corpus = lm.upload_corpus(text, text[:2000], text[:2000])
        running = lm.start_training(corpus.corpus_id, epochs=100_000, seed=1, **TINY_LM)
        queued = lm.start_training(corpus.corpus_id, epochs=1, seed=2, **TINY_LM)
        print(
            f"\nsequence server: one job training, job {queued.job_id} {lm.get_job(queued.job_id).state}; "
            f"compute pool {workers} workers + {queue} queued; {args.samples} sequential calls per row"
        )
        print(f"  {'condition':<28} {'call':<18} {'p50 ms':>8} {'p99 ms':>8} {'ok':>5}  other outcomes")
        print_rows("0 streams", measure(lm, queued.job_id, args.samples))
        channels, calls = open_streams(address, queued.job_id, args.streams)
        deadline = time.monotonic() + 120
        while in_flight(metrics, WATCH) < args.streams and time.monotonic() < deadline:
            time.sleep(0.1)
        open_now = int(in_flight(metrics, WATCH))
        print_rows(f"{open_now} idle WatchJob streams", measure(lm, queued.job_id, args.samples))
        stop = threading.Event()
        threads, outcomes = saturate(address, 3 * (workers + queue), stop)
        deadline = time.monotonic() + 120
        while outcomes["RESOURCE_EXHAUSTED"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the pool is full: the first refusal
        print_rows(f"pool full, {open_now} streams", measure(lm, queued.job_id, args.samples))
        stop.set()
        for t in threads:
            t.join(timeout=300)
        summary = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        print(f"  saturating clients ({len(threads)} threads, long AnalyzeGradients): {summary}")
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()
        lm.cancel_job(running.job_id)
        lm.cancel_job(queued.job_id)
    bad = open_now < args.streams or set(outcomes) - {"OK", "RESOURCE_EXHAUSTED"}
    return 1 if bad else 0


# -- concurrency sweep ------------------------------------------------------------------------------------
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
    p50, p99 = percentiles(latencies)
    return {
        "rps": len(latencies) / elapsed,
        "p50": p50,
        "p99": p99,
        "max": max(latencies) * 1e3 if latencies else float("nan"),
        "errors": {k: v for k, v in statuses.items() if k != "OK"},
    }


def sweep_service(args: argparse.Namespace, folder: str, service: str) -> int:
    bad = 0
    # The compute pool admits as many calls as the server accepts, so only the RPC limit refuses.
    flags = ["--max-concurrent-rpcs", str(args.limit), "--compute-queue", str(args.limit)]
    with server_process(service, folder, *flags) as (proc, address):
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
            if set(r["errors"]) - {"RESOURCE_EXHAUSTED"} or (clients <= args.limit and r["errors"]):
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
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["streams", "sweep"], choices=["streams", "sweep"])
    parser.add_argument("--streams", type=int, default=200, help="idle WatchJob streams to open")
    parser.add_argument("--samples", type=int, default=200, help="sequential calls per latency row")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--limit", type=int, default=16, help="server --max-concurrent-rpcs")
    parser.add_argument("--long", type=float, default=0.0, help="seconds of a leak run at 8 clients")
    parser.add_argument("--services", nargs="+", default=list(SERVICES), choices=list(SERVICES))
    args = parser.parse_args()
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        if "streams" in args.sections:
            bad += streams_section(args, os.path.join(tmp, "streams"))
        if "sweep" in args.sections:
            for service in args.services:
                bad += sweep_service(args, os.path.join(tmp, service), service)
    verdict = "as designed (only RESOURCE_EXHAUSTED, and only above the limits)"
    print("\nverdict:", verdict if not bad else f"{bad} section(s) or level(s) with unexpected outcomes")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
