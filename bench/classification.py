"""Benchmark: classification throughput of the default model over gRPC against the peer engine in-process.

    .venv/bin/python bench/classification.py [--images 64] [--concurrency 1 8 32]

On the same encoded images (the seed photos and scikit-image's photos, cycled to --images), side by side:
(a) onnxruntime in-process on the same ONNX file the server serves and (b) eager PyTorch in-process, each
decode + preprocess + one forward pass per 16 images; (c) onnxruntime in-process one image at a time (what a
single caller would run instead of the service); and gRPC ``Classify`` (one image per call, dynamic batching,
the default ``builtin_backend``) at each concurrency, with the shipped policy (a lone request runs at once,
the delay applies under concurrent demand) and with the delay always applied (the previous policy), side
by side on one server. Each row: images/s, its ratio to (a) and to the peer a user would pick at that
concurrency ((c) at concurrency 1, (a) above), p50 and p99 latency per call; then where the in-process time
goes.
"""

from __future__ import annotations

import argparse
import contextlib
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
from nnprobe_services.vision.classification.batcher import DynamicBatcher
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


def one_at_a_time(images: list[bytes], forward, prep) -> tuple[float, float]:
    """(images/s, p50 seconds per image) of decode + preprocess + ``forward`` of one image at a time in a
    worker thread, after a warm-up pass."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_one_at_a_time, images, forward, prep).result()


def _one_at_a_time(images: list[bytes], forward, prep) -> tuple[float, float]:
    latencies: list[float] = []
    for _ in range(2):  # the first run warms up
        latencies.clear()
        start = time.perf_counter()
        for data in images:
            t0 = time.perf_counter()
            image = preprocess.decode(data, field="image", limits=LIMITS, min_side=prep.resize)
            pixels = preprocess.model_input(image, prep, field="image", max_pixels=LIMITS.max_pixels)
            forward(pixels[None])
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
    return len(images) / elapsed, statistics.median(latencies)


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


def through_grpc(address: str, images: list[bytes], concurrency: int) -> tuple[float, float, float, float]:
    """(images/s, p50 latency, p99 latency, median seconds queued on the server) of one-image calls from
    ``concurrency`` threads."""
    with VisionClient(address, timeout=600) as client:
        client.classify(images[0], top_k=1)  # warm up: the model is loaded

        def call(data: bytes) -> tuple[float, float]:
            start = time.perf_counter()
            result = client.classify(data, top_k=1)
            return time.perf_counter() - start, result[0].queue_seconds

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            timings = list(pool.map(call, images))
        elapsed = time.perf_counter() - start
    latencies = sorted(latency for latency, _ in timings)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    queued = statistics.median(queued for _, queued in timings)
    return len(images) / elapsed, statistics.median(latencies), p99, queued


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating runs per row; each row reports its best"
    )
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
        rows += _grpc_rows(Path(folder), images, args, peer, lambda: one_at_a_time(images, run_ort, prep))
    print(
        f"{models.DEFAULT_MODEL} ({path.name}) on {device}, {len(images)} images, "
        f"{torch.get_num_threads()} threads"
    )
    print_table(
        rows, ["path", "concurrency", "images/s", "vs (a)", "vs peer", "p50 s", "p99 s", "queued p50 ms"]
    )
    print("\nwhere the time goes in-process (ms per image):")
    print_table(
        [
            (name, *(f"{1000 * parts[k]:.2f}" for k in ("decode", "preprocess", "inference")))
            for name, parts in (("(a) onnxruntime", peer_parts), ("(b) eager PyTorch", eager_parts))
        ],
        ["engine", "decode", "resize + crop", "inference"],
    )


def _in_process_rows(peer: float, eager: float) -> list[tuple]:
    """The rows of (a) onnxruntime and (b) eager PyTorch in batches of 16; "vs peer" compares with (a)."""
    return [
        ("(a) onnxruntime in-process, batches of 16", "-", f"{peer:.2f}", "1.00", "1.00", "-", "-", "-"),
        (
            "(b) eager PyTorch in-process, batches of 16",
            "-",
            f"{eager:.2f}",
            f"{eager / peer:.2f}",
            "-",
            "-",
            "-",
            "-",
        ),
    ]


class _DelayAlways:
    """While active, every request counts as arriving under demand (the batch in flight flag reads true):
    the previous policy, where each batch waits for the delay."""

    def __enter__(self) -> None:
        setattr(DynamicBatcher, "_in_flight", property(lambda self: True, lambda self, value: None))  # noqa: B010

    def __exit__(self, *exc: object) -> None:
        delattr(DynamicBatcher, "_in_flight")


def _grpc_rows(
    folder: Path, images: list[bytes], args: argparse.Namespace, peer: float, single
) -> list[tuple]:
    """Rows of ``Classify`` calls to a server started here (its cache and data in ``folder``) at each
    concurrency, with the shipped batching policy and with the delay always applied, alternating over
    ``args.rounds`` runs (the best of each kept), compared with (a) and with the peer a user would pick:
    (c) onnxruntime one image at a time, measured in the same rounds, at concurrency 1; (a) above."""
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
    policies = {"lone runs at once": contextlib.nullcontext, "delay always": _DelayAlways}
    rows: list[tuple] = []
    try:
        for concurrency in args.concurrency:
            best: dict[str, tuple[float, ...]] = {}
            for _ in range(args.rounds):
                if concurrency == 1:
                    rate, p50 = single()
                    best["(c)"] = max(best.get("(c)", (0.0,)), (rate, p50, 0.0, 0.0))
                for label, policy in policies.items():
                    with policy():
                        measured = through_grpc(f"127.0.0.1:{port}", images, concurrency)
                    best[label] = max(best.get(label, (0.0,)), measured)
            versus = best["(c)"][0] if concurrency == 1 else peer
            for label, (rate, p50, p99, queued) in best.items():
                name = (
                    "(c) onnxruntime in-process, one image at a time"
                    if label == "(c)"
                    else f"gRPC Classify, {label}"
                )
                rows.append(
                    (
                        name,
                        concurrency,
                        f"{rate:.2f}",
                        f"{rate / peer:.2f}",
                        f"{rate / versus:.2f}",
                        f"{p50:.3f}",
                        "-" if label == "(c)" else f"{p99:.3f}",
                        "-" if label == "(c)" else f"{1000 * queued:.1f}",
                    )
                )
            print(f"concurrency {concurrency}: {best}", file=sys.stderr)
    finally:
        server.shutdown(0).wait()
    return rows


if __name__ == "__main__":
    main()
