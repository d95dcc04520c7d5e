"""Benchmark: classification throughput of the default model over gRPC against the peer engine in-process.

    .venv/bin/python bench/classification.py [--images 64] [--concurrency 1 8 32]

On the same encoded images (the seed photos and scikit-image's photos, cycled to --images), side by side:
(a) onnxruntime in-process on the same ONNX file the server serves and (b) eager PyTorch in-process, each
decode + preprocess + one forward pass per 16 images; and gRPC ``Classify`` (one image per call, dynamic
batching, the default ``builtin_backend``) at each concurrency. Each row: images/s, its ratio to (a) and (b),
p50 and p99 latency per call; then where the in-process time goes.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from nnprobe import VisionClient
from nnprobe.cli.output import print_table
from nnprobe_services.device import resolve_device
from nnprobe_services.server import ServerConfig, create_server
from nnprobe_services.vision.images import preprocess
from nnprobe_services.vision.models import registry as models
from nnprobe_services.vision.models import store
from PIL import Image

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-images"
LIMIT_BATCH = 16
LIMITS = preprocess.ImageLimits(max_bytes=1 << 26, max_pixels=1 << 27)


def load_images(count: int) -> list[bytes]:
    from skimage import data

    encoded = [p.read_bytes() for p in sorted(SEED_DIR.glob("*.jpg"))]
    for photo in (data.chelsea(), data.coffee(), data.rocket(), data.astronaut()):
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, format="JPEG", quality=95)
        encoded.append(buffer.getvalue())
    return [encoded[i % len(encoded)] for i in range(count)]


def in_process(images: list[bytes], forward, prep) -> tuple[float, dict[str, float]]:
    """Images/s of decode + preprocess + ``forward`` per batch of 16, the best of three warm runs, in a worker
    thread (as the server runs it), and the seconds per image spent decoding, preprocessing and inferring."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_in_process, images, forward, prep).result()


def _in_process(images: list[bytes], forward, prep) -> tuple[float, dict[str, float]]:
    best, parts = 0.0, {}
    for run in range(4):  # the first run warms up (kernel selection, caches) and is not counted
        spent = {"decode": 0.0, "preprocess": 0.0, "inference": 0.0}
        start = time.perf_counter()
        for i in range(0, len(images), LIMIT_BATCH):
            batch = []
            for data in images[i : i + LIMIT_BATCH]:
                t0 = time.perf_counter()
                image = preprocess.decode(data, field="image", limits=LIMITS, min_side=prep.resize)
                t1 = time.perf_counter()
                batch.append(preprocess.model_input(image, prep, field="image", max_pixels=LIMITS.max_pixels))
                spent["decode"] += t1 - t0
                spent["preprocess"] += time.perf_counter() - t1
            t2 = time.perf_counter()
            forward(torch.stack(batch))
            spent["inference"] += time.perf_counter() - t2
        rate = len(images) / (time.perf_counter() - start)
        if run and rate > best:
            best, parts = rate, {k: v / len(images) for k, v in spent.items()}
    return best, parts


def engines(device: torch.device, cache: Path):
    """(ONNX file of the default model, an onnxruntime session on it, the eager PyTorch module, its prep)."""
    import onnxruntime as ort

    models_store = store.ModelStore(device, builtin_backend="onnxruntime", onnx_cache=cache)
    loaded = models_store.get(models.DEFAULT_MODEL)
    path = loaded.backend.path  # type: ignore[attr-defined]
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return path, session, loaded.module, loaded.record.preprocessing


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
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        path, session, module, prep = engines(device, cache / "onnx")

        def run_ort(pixels: torch.Tensor) -> None:
            session.run(None, {session.get_inputs()[0].name: pixels.numpy()})

        def run_torch(pixels: torch.Tensor) -> None:
            with torch.inference_mode():
                module(pixels.to(device))

        peer, peer_parts = in_process(images, run_ort, prep)
        eager, eager_parts = in_process(images, run_torch, prep)
        rows = _in_process_rows(peer, eager)
        rows += _grpc_rows(Path(folder), images, args.concurrency, peer, eager)
    print(
        f"{models.DEFAULT_MODEL} ({path.name}) on {device}, {len(images)} images, "
        f"{torch.get_num_threads()} threads"
    )
    print_table(rows, ["path", "concurrency", "images/s", "vs (a)", "vs (b)", "p50 s", "p99 s"])
    print("\nwhere the time goes in-process (ms per image):")
    print_table(
        [
            (name, *(f"{1000 * parts[k]:.2f}" for k in ("decode", "preprocess", "inference")))
            for name, parts in (("(a) onnxruntime", peer_parts), ("(b) eager PyTorch", eager_parts))
        ],
        ["engine", "decode", "resize + crop", "inference"],
    )


def _in_process_rows(peer: float, eager: float) -> list[tuple]:
    """The rows of (a) onnxruntime and (b) eager PyTorch in-process, at ``peer`` and ``eager`` images/s."""
    return [
        (
            "(a) onnxruntime in-process, batches of 16",
            "-",
            f"{peer:.2f}",
            "1.00",
            f"{eager and peer / eager:.2f}",
            "-",
            "-",
        ),
        (
            "(b) eager PyTorch in-process, batches of 16",
            "-",
            f"{eager:.2f}",
            f"{eager / peer:.2f}",
            "1.00",
            "-",
            "-",
        ),
    ]


def _grpc_rows(
    folder: Path, images: list[bytes], concurrencies: list[int], peer: float, eager: float
) -> list[tuple]:
    """A row per concurrency of ``Classify`` calls to a server started here (its cache and data in
    ``folder``), compared with the in-process rates."""
    base = ServerConfig(
        service="vision",
        host="127.0.0.1",
        port=0,
        compute_queue=64,
        max_concurrent_rpcs=256,
        cache_dir=folder / "cache",
        data_dir=folder / "data",
    )
    server, port = create_server(base.validate())
    server.start()
    rows: list[tuple] = []
    try:
        for concurrency in concurrencies:
            rate, p50, p99 = through_grpc(f"127.0.0.1:{port}", images, concurrency)
            rows.append(
                (
                    "gRPC Classify (onnxruntime, dynamic batching)",
                    concurrency,
                    f"{rate:.2f}",
                    f"{rate / peer:.2f}",
                    f"{rate / eager:.2f}",
                    f"{p50:.3f}",
                    f"{p99:.3f}",
                )
            )
            print(f"gRPC, concurrency {concurrency}: {rate:.2f} images/s", file=sys.stderr)
    finally:
        server.shutdown(0).wait()
    return rows


if __name__ == "__main__":
    main()
