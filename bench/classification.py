"""Benchmark: ImageNet classification throughput, in-process against gRPC with and without dynamic batching.

    .venv/bin/python bench/classification.py [--images 64] [--concurrency 1 8 32]

On the same encoded images (the seed photos and scikit-image's photos, cycled to --images): the in-process
limit (decode + preprocess + one batched forward pass per 16 images of the default model) and gRPC
``Classify`` throughput with one image per call at each concurrency, with dynamic batching on and off.
Each row: images/s, its ratio to the limit, p50 and p99 latency per call.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from nnprobe import VisionClient
from nnprobe.cli.output import print_table
from nnprobe_services.server import ServerConfig, create_server
from nnprobe_services.server.device import resolve_device
from nnprobe_services.vision import classify, models, preprocess
from PIL import Image

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-images"
LIMIT_BATCH = 16


def load_images(count: int) -> list[bytes]:
    from skimage import data

    encoded = [p.read_bytes() for p in sorted(SEED_DIR.glob("*.jpg"))]
    for photo in (data.chelsea(), data.coffee(), data.rocket(), data.astronaut()):
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, format="JPEG", quality=95)
        encoded.append(buffer.getvalue())
    return [encoded[i % len(encoded)] for i in range(count)]


def in_process(images: list[bytes], device: torch.device) -> float:
    """Images/s of decode + preprocess + batched forward, the best of three warm runs, in a worker thread
    (as the server runs it)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_in_process, images, device).result()


@functools.cache
def _model(device: torch.device) -> models.LoadedModel:
    return models.ModelStore(device).get(models.DEFAULT_MODEL)


def _in_process(images: list[bytes], device: torch.device) -> float:
    model = _model(device)
    prep = model.record.preprocessing
    best = 0.0
    for run in range(4):  # the first run warms up (kernel selection, caches) and is not counted
        start = time.perf_counter()
        for i in range(0, len(images), LIMIT_BATCH):
            pixels = torch.stack(
                [
                    preprocess.model_input(preprocess.decode(d, max_bytes=1 << 26, max_pixels=1 << 27), prep)
                    for d in images[i : i + LIMIT_BATCH]
                ]
            )
            classify.logits_of(model, pixels)
        if run:
            best = max(best, len(images) / (time.perf_counter() - start))
    return best


def through_grpc(address: str, images: list[bytes], concurrency: int) -> tuple[float, float, float]:
    """(images/s, p50 latency, p99 latency) of one-image calls from ``concurrency`` threads."""
    with VisionClient(address, timeout=600) as client:
        client.classify(images[0], top_k=1)  # warm up: the model is loaded

        def call(data: bytes) -> float:
            start = time.perf_counter()
            client.classify(data, top_k=1)
            return time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = sorted(pool.map(call, images))
        elapsed = time.perf_counter() - start
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return len(images) / elapsed, statistics.median(latencies), p99


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args(argv)
    device = resolve_device("auto")
    images = load_images(args.images)
    limit = in_process(images, device)
    rows: list[tuple] = [("in-process, batches of 16", "-", f"{limit:.2f}", "1.00", "-", "-")]
    base = ServerConfig(service="vision", host="127.0.0.1", port=0, compute_queue=64, max_concurrent_rpcs=256)
    for batching in (True, False):
        server, port = create_server(dataclasses.replace(base, dynamic_batching=batching).validate())
        server.start()
        try:
            for concurrency in args.concurrency:
                rate, p50, p99 = through_grpc(f"127.0.0.1:{port}", images, concurrency)
                label = f"gRPC, dynamic batching {'on' if batching else 'off'}"
                rows.append(
                    (label, concurrency, f"{rate:.2f}", f"{rate / limit:.2f}", f"{p50:.3f}", f"{p99:.3f}")
                )
                print(f"{label}, concurrency {concurrency}: {rate:.2f} images/s", file=sys.stderr)
        finally:
            server.shutdown(0).wait()
    again = in_process(images, device)  # the machine may be shared: keep the better limit
    if again > limit:
        rows = [(*row[:3], f"{float(row[2]) / again:.2f}", *row[4:]) for row in rows]
        rows[0] = ("in-process, batches of 16", "-", f"{again:.2f}", "1.00", "-", "-")
    print(
        f"{models.DEFAULT_MODEL} on {device}, {len(images)} images, {torch.get_num_threads()} torch threads"
    )
    print_table(rows, ["path", "concurrency", "images/s", "ratio to limit", "p50 s", "p99 s"])


if __name__ == "__main__":
    main()
