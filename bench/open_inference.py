"""Benchmark: Triton's perf_analyzer against the vision server's Open Inference Protocol, beside nnprobe's own
``Classify`` on the same server, the same photos and the same concurrencies, in one run.

    .venv/bin/python bench/open_inference.py [--concurrency 1 8 32] [--requests 64]

perf_analyzer (the ``perf-analyzer`` wheel, made runnable by scripts/triton_env.py) sends ``ModelInfer``
calls of one JPEG each (``image_bytes``, the seed photos in turn) to the default model, in count windows of
``--requests`` calls, and reports throughput and client-side latency percentiles. ``Classify`` is called
with one JPEG per call from ``concurrency`` threads through the SDK. Each row: images/s, the ratio to
``Classify`` at the same concurrency, p50 and p99 latency per call.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nnprobe import VisionClient
from nnprobe.cli.output import print_table
from nnprobe_services.server import ServerConfig, create_server
from nnprobe_services.vision.models import registry as models

ROOT = Path(__file__).resolve().parents[1]
SEED_DIR = ROOT.parent / "shared" / "data" / "seed-images"


def classify_rate(
    address: str, images: list[bytes], concurrency: int, calls: int
) -> tuple[float, float, float]:
    """(images/s, p50 s, p99 s) of ``calls`` one-image Classify calls from ``concurrency`` threads."""
    with VisionClient(address, timeout=600) as client:
        client.classify(images[0], top_k=1)

        def call(i: int) -> float:
            start = time.perf_counter()
            client.classify(images[i % len(images)], top_k=1)
            return time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = sorted(pool.map(call, range(calls)))
        elapsed = time.perf_counter() - start
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return calls / elapsed, statistics.median(latencies), p99


def input_data(images: list[bytes], path: Path) -> None:
    """perf_analyzer's --input-data file: one step per photo; ``b64`` holds the raw BYTES tensor (each element
    prefixed by its 4-byte little-endian length), as perf_analyzer sends it unchanged."""
    steps = [
        {"image_bytes": {"b64": base64.b64encode(struct.pack("<I", len(i)) + i).decode(), "shape": [1]}}
        for i in images
    ]
    path.write_text(json.dumps({"data": steps}))


def perf_analyzer(binary: Path, address: str, data: Path, concurrency: int, requests: int, out: Path):
    """(images/s, p50 s, p99 s) that perf_analyzer measured, or the reason it could not."""
    command = [
        str(binary),
        "-m",
        models.DEFAULT_MODEL,
        "-i",
        "grpc",
        "-u",
        address,
        "--input-data",
        str(data),
        "--concurrency-range",
        str(concurrency),
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(requests),
        "--stability-percentage",
        "50",
        "--max-trials",
        "6",
        "-f",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not out.is_file():
        return f"perf_analyzer failed: {(done.stdout + done.stderr).strip().splitlines()[-1:]}"
    (row,) = list(csv.DictReader(out.open()))
    return float(row["Inferences/Second"]), int(row["p50 latency"]) / 1e6, int(row["p99 latency"]) / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="calls per measurement window")
    args = parser.parse_args(argv)
    made = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "triton_env.py"), "--perf-analyzer"],
        capture_output=True,
        text=True,
        check=True,
    )
    binary = Path(made.stdout.strip().splitlines()[-1])
    images = [p.read_bytes() for p in sorted(SEED_DIR.glob("*.jpg"))]
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as folder:
        config = ServerConfig(
            service="vision",
            host="127.0.0.1",
            port=0,
            compute_queue=64,
            max_concurrent_rpcs=256,
            cache_dir=Path(folder) / "cache",
            data_dir=Path(folder) / "data",
        )
        server, port = create_server(config.validate())
        server.start()
        address = f"127.0.0.1:{port}"
        data = Path(folder) / "input.json"
        input_data(images, data)
        try:
            for concurrency in args.concurrency:
                rate, p50, p99 = classify_rate(address, images, concurrency, 3 * args.requests)
                rows.append(
                    ("nnprobe Classify (SDK)", concurrency, f"{rate:.2f}", "1.00", f"{p50:.3f}", f"{p99:.3f}")
                )
                print(f"Classify, concurrency {concurrency}: {rate:.2f} images/s", file=sys.stderr)
                measured = perf_analyzer(
                    binary, address, data, concurrency, args.requests, Path(folder) / f"pa{concurrency}.csv"
                )
                if isinstance(measured, str):
                    rows.append(("perf_analyzer ModelInfer", concurrency, measured, "-", "-", "-"))
                    continue
                oip_rate, oip_p50, oip_p99 = measured
                rows.append(
                    (
                        "perf_analyzer ModelInfer (Open Inference Protocol)",
                        concurrency,
                        f"{oip_rate:.2f}",
                        f"{oip_rate / rate:.2f}",
                        f"{oip_p50:.3f}",
                        f"{oip_p99:.3f}",
                    )
                )
                print(f"perf_analyzer, concurrency {concurrency}: {oip_rate:.2f} images/s", file=sys.stderr)
        finally:
            server.shutdown(0).wait()
    print(f"{models.DEFAULT_MODEL}, one JPEG per call ({len(images)} seed photos in turn), dynamic batching")
    print_table(rows, ["path", "concurrency", "images/s", "vs Classify", "p50 s", "p99 s"])


if __name__ == "__main__":
    main()
