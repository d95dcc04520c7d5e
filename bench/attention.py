"""AttentionService benchmark: batched permutation checking vs the notebook's loop, and the RPC's cost.

    .venv/bin/python bench/attention.py

Prints, side by side in one run:
1. all 40,320 permutations of T=8, D=64 (float64, the notebook's layer: whole-matrix softmax, scale 2):
   one batched tensor computation vs the notebook's Python loop calling the attention function per
   permutation — aim >= 50x;
2. a small CheckFeedForwardEquivalence through gRPC (SDK -> in-process server on loopback) vs calling the
   core function in-process — the ratio is what the RPC layer costs.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from nnprobe import AttentionClient
from nnprobe_services.attention import checks
from nnprobe_services.server import ServerConfig, create_server


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def notebook_loop(x: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray) -> float:
    """The original notebook's check, kept as it was: per permutation, s(X) recomputed and deep-copied,
    rows permuted by fancy assignment, s(PX) computed, compared with np.allclose. Softmax over the whole
    score matrix (scipy.special.softmax without axis), scale 2. Returns the largest deviation seen."""

    def softmax(a: np.ndarray) -> np.ndarray:
        e = np.exp(a - a.max())
        return e / e.sum()

    def s_x(m: np.ndarray) -> np.ndarray:
        q, k, v = m @ wq, m @ wk, m @ wv
        return softmax((q @ k.T) / 2) @ v

    p0 = range(x.shape[0])
    worst = 0.0
    for p in itertools.permutations(p0):
        psx = deepcopy(s_x(x))
        psx[p0] = psx[list(p)]
        px = deepcopy(x)
        px[p0] = px[list(p)]
        spx = s_x(px)
        assert np.allclose(psx, spx)
        worst = max(worst, float(np.abs(psx - spx).max()))
    return worst


def permutations_section() -> list[tuple[str, str]]:
    t, d = 8, 64
    x = checks.random_input(t, d, 0, torch.float64)
    weights = checks.random_weights(d, 0, torch.float64)
    layer = checks.SelfAttention(*weights, scale=2.0, softmax="matrix")  # the notebook's layer
    perms = checks.exhaustive_permutations(t)

    def batched() -> checks.PermutationCheck:
        return checks.check_equivariance(x, layer, perms, tolerance=1e-9, exhaustive=True)

    result = batched()
    batched_s = best_of(batched, 3)
    loop_start = time.perf_counter()
    loop_worst = notebook_loop(x.numpy(), *(w.numpy() for w in weights))
    loop_s = time.perf_counter() - loop_start
    assert result.holds and abs(result.max_deviation - loop_worst) < 1e-12
    return [
        ("permutations (T=8, D=64)", f"{len(perms):,}"),
        ("batched check", f"{batched_s * 1e3:9.1f} ms"),
        ("notebook loop (one call each)", f"{loop_s * 1e3:9.1f} ms"),
        ("speed-up (loop / batched)", f"{loop_s / batched_s:9.1f} x   (aim >= 50x)"),
        ("max deviation (both agree)", f"{result.max_deviation:.3g}"),
    ]


def rpc_section(calls: int = 200) -> list[tuple[str, str]]:
    kwargs = {"widths": [64, 256, 64], "batch_size": 4, "sequence_length": 16, "seed": 0, "timing_repeats": 1}
    x = checks.random_batch(4, 16, 64, 0, torch.float32)

    def in_process() -> None:
        checks.check_feed_forward([64, 256, 64], x, activation="between", seed=0, tolerance=1e-6, repeats=1)

    with tempfile.TemporaryDirectory() as tmp:
        config = ServerConfig(
            service="attention",
            host="127.0.0.1",
            port=0,
            device="cpu",
            data_dir=Path(tmp),
            cache_dir=Path(tmp),
        )
        server, port = create_server(config)
        server.start()
        try:
            with AttentionClient(f"127.0.0.1:{port}") as client:
                client.check_feed_forward_equivalence(**kwargs)  # warm up the channel
                in_process()
                rpc_times, local_times = [], []
                for _ in range(calls):  # interleaved so both see the same machine load
                    start = time.perf_counter()
                    client.check_feed_forward_equivalence(**kwargs)
                    rpc_times.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    in_process()
                    local_times.append(time.perf_counter() - start)
        finally:
            server.shutdown(0).wait()
    rpc, local = statistics.median(rpc_times), statistics.median(local_times)
    return [
        ("CheckFeedForwardEquivalence", f"widths 64-256-64, x (4, 16, 64), {calls} calls each"),
        ("in-process core (median)", f"{local * 1e3:9.3f} ms"),
        ("through gRPC (median)", f"{rpc * 1e3:9.3f} ms"),
        ("ratio (gRPC / in-process)", f"{rpc / local:9.2f} x   (overhead {(rpc - local) * 1e3:.3f} ms/call)"),
    ]


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for title, rows in (
        ("Permutation equivariance: batched vs loop", permutations_section()),
        ("RPC overhead", rpc_section()),
    ):
        print(f"\n{title}")
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"  {key.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
