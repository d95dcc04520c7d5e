"""Benchmark: analytic receptive fields of traced models against the empirical checks.

    .venv/bin/python bench/receptive_field.py

For resnet50 (224) and inception_v3 (299): the time to build and trace the model and compute every node's
field (cold: nothing cached; warm: the traced graph cached, as in a running server), against proving one
unit's box by back-propagation and estimating the effective field over 8 random inputs. Ratios are to the
cold analytic time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from fractions import Fraction

import torch
from nnprobe.cli.output import print_table
from nnprobe_services.server.device import resolve_device
from nnprobe_services.vision import rf_empirical, rf_graph
from nnprobe_services.vision.receptive_field import center_unit

MODELS = [("resnet50", 224), ("inception_v3", 299)]
HALF = Fraction(1, 2)


def seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    device = resolve_device("auto")
    rows = []
    for name, size in MODELS:

        def cold(name=name, size=size):
            rf_graph.traced_meta.cache_clear()
            return rf_graph.analyse_model(name, (size, size), HALF, None)

        graph = cold()
        end = graph.fields[-1]
        x, y = center_unit(end)

        def warm_run(name: str = name, size: int = size) -> object:
            return rf_graph.analyse_model(name, (size, size), HALF, None)

        warm = seconds(warm_run)
        cold_s = seconds(cold)

        def verify(name=name, size=size, layer=end.name, x=x, y=y):
            probe, channels = rf_empirical.model_probe(name, [layer], device, weights="transparent")
            return rf_empirical.gradient_boxes(
                probe, channels, (size, size), device, [(layer, x, y)], lambda: False
            )

        def erf(name=name, size=size, layer=end.name, x=x, y=y):
            probe, channels = rf_empirical.model_probe(name, [layer], device, weights="random")
            return rf_empirical.gradient_map(
                probe, channels, (size, size), device, (layer, x, y), 8, 0, lambda: False
            )

        verify_s, erf_s = seconds(verify, 1), seconds(erf, 1)
        rows.append(
            (
                name,
                f"{size}",
                len(graph.fields),
                f"{end.height.receptive}",
                f"{cold_s * 1e3:.0f} ms",
                f"{warm * 1e3:.0f} ms",
                f"{verify_s * 1e3:.0f} ms",
                f"{erf_s * 1e3:.0f} ms",
                f"{verify_s / cold_s:.1f}x",
                f"{erf_s / cold_s:.1f}x",
            )
        )
    print(f"receptive fields on {device}: analytic (trace + arithmetic) vs empirical checks")
    print_table(
        rows,
        [
            "model",
            "input",
            "nodes",
            "r",
            "analytic cold",
            "analytic warm",
            "verify 1 unit",
            "ERF x8",
            "verify/analytic",
            "ERF/analytic",
        ],
    )


if __name__ == "__main__":
    main()
