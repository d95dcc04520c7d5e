"""Benchmark: analytic receptive fields of captured models against the empirical checks.

    .venv/bin/python bench/receptive_field.py

For resnet50, convnext_tiny, efficientnet_b0 (224) and inception_v3 (299): the time to build the model,
capture it (torch.export, in the worker process) and compute every node's field (cold: nothing cached), the
analysis alone (warm: the capture cached, as in a running server), against proving one unit's box by
back-propagation through the transparent twin and estimating the effective field over 8 random inputs. Then
one ONNX file (resnet18 exported by torch.onnx.export): reading its graph and analysing it, against verify.
Ratios are to the cold analytic time.

    .venv/bin/python bench/receptive_field.py --tiling

A small U-Net-like net (two poolings, 256 x 256, tiles of 64): planning the overlap tiles, one whole-image
pass, and the tiling proof (the whole pass plus one pass per tile window, float64), with the ratio.

    .venv/bin/python bench/receptive_field.py --upload

fcn_resnet50 (126 MB as ONNX) sent through the SDK whole and as its graph without the weights' values: bytes
sent and request time side by side.

    .venv/bin/python bench/receptive_field.py --dense [SIDE]

Segmentation nets by name (fcn_resnet50, deeplabv3_mobilenet_v3_large at SIDE x SIDE, default 96) and
vision transformers (vit_base_patch16_224, swin_tiny_patch4_window7_224 at 224): capture + analysis cold,
the analysis warm, and verifying the end point's centre unit. Swin is refused by name (windowed attention):
its row times the refusal.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import torch
from nnprobe.cli.output import print_table
from nnprobe_services.device import resolve_device
from nnprobe_services.vision.receptive_fields import catalogue
from nnprobe_services.vision.receptive_fields import empirical as rf_empirical
from nnprobe_services.vision.receptive_fields import graph as rf_graph
from nnprobe_services.vision.receptive_fields.boxes import center_unit
from nnprobe_services.vision.receptive_fields.frontends import onnx_reader as rf_onnx
from nnprobe_services.vision.receptive_fields.frontends import trace_worker as rf_trace_worker

MODELS = [("resnet50", 224), ("convnext_tiny", 224), ("efficientnet_b0", 224), ("inception_v3", 299)]
DENSE_MODELS = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large"]
TOKEN_MODELS = ["vit_base_patch16_224", "swin_tiny_patch4_window7_224"]
DENSE_HEADERS = ["model", "input", "nodes", "r", "analytic cold", "analytic warm", "verify 1 unit", "answer"]
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
    rows = [model_row(name, size, device) for name, size in MODELS]
    rows.append(onnx_row(device))
    print(f"receptive fields on {device}: analytic (capture + arithmetic) vs empirical checks")
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


def model_row(name: str, size: int, device: torch.device) -> tuple:
    """One captured model at ``size``: the analysis cold and warm, then verifying the last node's centre
    unit and estimating its effective field."""

    def cold():
        rf_trace_worker.forget(name)
        return rf_graph.analyse_model(name, (size, size), HALF, None)

    graph = cold()
    end = graph.fields[-1]
    x, y = center_unit(end)

    def warm_run() -> object:
        return rf_graph.analyse_model(name, (size, size), HALF, None)

    warm = seconds(warm_run)
    cold_s = seconds(cold)

    def verify():
        probe, channels = rf_empirical.model_probe(
            name, [end.name], device, weights="transparent", input_size=(size, size)
        )
        return rf_empirical.gradient_boxes(
            probe, channels, (size, size), device, [(end.name, x, y)], lambda: False
        )

    def erf():
        probe, channels = rf_empirical.model_probe(
            name, [end.name], device, weights="random", input_size=(size, size)
        )
        return rf_empirical.gradient_map(
            probe, channels, (size, size), device, (end.name, x, y), 8, 0, lambda: False
        )

    verify_s, erf_s = seconds(verify, 1), seconds(erf, 1)
    return (
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


def onnx_row(device: torch.device) -> tuple:
    """resnet18 exported to ONNX at 224: read the graph and analyse it, then verify the centre unit."""
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = catalogue.build("resnet18", "cpu")
        example = (torch.zeros(1, 3, 224, 224),)
        torch.onnx.export(model, example, buffer, dynamo=False, opset_version=17)  # type: ignore[arg-type]
    data = buffer.getvalue()
    capture = rf_onnx.read(data, None, "resnet18.onnx")
    graph = rf_graph.analyse_capture(capture, HALF, None)
    end = graph.fields[-1]
    x, y = center_unit(end)
    analyse_s = seconds(lambda: rf_graph.analyse_capture(rf_onnx.read(data, None, "r18"), HALF, None))

    def verify():
        probe, channels = rf_empirical.twin_probe(capture, [end.name], device)
        return rf_empirical.gradient_boxes(
            probe, channels, (224, 224), device, [(end.name, x, y)], lambda: False
        )

    verify_s = seconds(verify, 1)
    return (
        f"resnet18.onnx ({len(data) >> 20} MB)",
        "224",
        len(graph.fields),
        f"{end.height.receptive}",
        f"{analyse_s * 1e3:.0f} ms",
        "-",
        f"{verify_s * 1e3:.0f} ms",
        "-",
        f"{verify_s / analyse_s:.1f}x",
        "-",
    )


def fcn_resnet50_onnx(side: int = 64) -> bytes:
    """torchvision's fcn_resnet50 with random weights, exported to ONNX at ``side`` x ``side`` (~126 MB)."""
    import warnings

    import torchvision

    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = (torch.zeros(1, 3, side, side),)
        torch.onnx.export(model, example, buffer, dynamo=False, opset_version=17)  # type: ignore[arg-type]
    return buffer.getvalue()


def upload_rows() -> list[tuple]:
    """fcn_resnet50 as ONNX through the SDK to an in-process server (limits raised to take the full model):
    the whole file against its graph without the weights' values (``nnprobe.vision.onnx_graph``), each the
    median of 3 requests (stripping included in the weightless time)."""
    import tempfile
    from pathlib import Path

    from nnprobe import VisionClient
    from nnprobe.vision import onnx_graph
    from nnprobe_services.server import ServerConfig, create_server

    data = fcn_resnet50_onnx()
    light, withheld = onnx_graph.weightless(data)
    limit = 512 << 20
    with tempfile.TemporaryDirectory() as root:
        config = ServerConfig(
            service="vision", host="127.0.0.1", port=0, device="cpu", data_dir=Path(root) / "d",
            cache_dir=Path(root) / "c", max_message_bytes=limit, max_model_bytes=limit,
        ).validate()  # fmt: skip
        server, port = create_server(config)
        server.start()
        try:
            with VisionClient(f"127.0.0.1:{port}", max_message_bytes=limit, timeout=600) as client:
                answers: dict[bool, Any] = {}
                times: dict[bool, float] = {}
                for weights in (True, False):

                    def request(weights: bool = weights) -> object:
                        answers[weights] = client.compute_receptive_field(onnx=data, send_weights=weights)
                        return answers[weights]

                    times[weights] = seconds(request)
        finally:
            server.stop(0)
    same = [(f.height, f.width) for f in answers[True].layers] == [
        (f.height, f.width) for f in answers[False].layers
    ]
    full_s, light_s = times[True], times[False]
    strip_s = seconds(lambda: onnx_graph.weightless(data))
    return [
        ("full model", f"{len(data) / 1e6:.1f} MB", f"{full_s * 1e3:.0f} ms", "1.0x", "1.0x", "-"),
        (
            f"weightless ({withheld} tensors withheld)",
            f"{len(light) / 1e3:.1f} kB",
            f"{light_s * 1e3:.0f} ms (strip {strip_s * 1e3:.0f} ms)",
            f"{len(data) / len(light):.0f}x smaller",
            f"{full_s / light_s:.1f}x faster",
            "same fields" if same else "FIELDS DIFFER",
        ),
    ]


def dense_row(name: str, size: int, device: torch.device) -> tuple:
    """One model by name at ``size``: capture + analysis cold (the worker's cache forgotten), the
    analysis warm, and verifying the end point's centre unit; a refusal (Swin's windowed attention) is
    timed instead."""
    from nnprobe_services.vision.receptive_fields.arithmetic import Unsupported

    def cold() -> rf_graph.GraphField:
        rf_trace_worker.forget(name)
        return rf_graph.analyse_model(name, (size, size), HALF, None)

    start = time.perf_counter()
    try:
        graph = cold()
    except Unsupported as error:
        refused_s = time.perf_counter() - start
        reason = "refused: windowed attention" if "windowed attention" in str(error) else f"refused: {error}"
        return (name, f"{size}", "-", "-", f"{refused_s * 1e3:.0f} ms", "-", "-", reason)
    cold_s = time.perf_counter() - start
    end = graph.fields[-1]
    x, y = center_unit(end)
    warm_s = seconds(lambda: rf_graph.analyse_model(name, (size, size), HALF, None))

    def verify() -> object:
        probe, channels = rf_empirical.model_probe(
            name, [end.name], device, weights="transparent", input_size=(size, size)
        )
        return rf_empirical.gradient_boxes(
            probe, channels, (size, size), device, [(end.name, x, y)], lambda: False
        )

    verify_s = seconds(verify, 1)
    return (
        name,
        f"{size}",
        len(graph.fields),
        f"{end.height.receptive}",
        f"{cold_s * 1e3:.0f} ms",
        f"{warm_s * 1e3:.0f} ms",
        f"{verify_s * 1e3:.0f} ms",
        f"end point {end.name}",
    )


def dense_rows(side: int) -> list[tuple]:
    """The segmentation nets at ``side`` x ``side`` and the vision transformers at 224."""
    device = resolve_device("auto")
    sized = [(name, side) for name in DENSE_MODELS] + [(name, 224) for name in TOKEN_MODELS]
    return [dense_row(name, size, device) for name, size in sized]


class UNetLike(torch.nn.Module):
    """Two 2 x 2 poolings down, nearest upsampling back, skip concatenations: logits at input resolution."""

    def __init__(self, width: int = 16, classes: int = 4) -> None:
        super().__init__()
        nn = torch.nn

        def block(cin: int, cout: int) -> torch.nn.Module:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1)
            )

        self.enc1, self.enc2, self.mid = block(3, width), block(width, 2 * width), block(2 * width, 2 * width)
        self.dec2, self.dec1 = block(4 * width, width), block(2 * width, width)
        self.pool, self.up = nn.MaxPool2d(2), nn.Upsample(scale_factor=2)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc1(x)
        b = self.enc2(self.pool(a))
        c = self.mid(self.pool(b))
        d = self.dec2(torch.cat([self.up(c), b], dim=1))
        return self.head(self.dec1(torch.cat([self.up(d), a], dim=1)))


def tiling_row(side: int = 256, tile: int = 64) -> tuple:
    """The overlap-tile plan of a small U-Net's logits (``tiling.plan``) and its proof (``tiling.prove``, one
    float64 forward pass per tile) against one float64 whole-image pass."""
    from nnprobe_services.vision.receptive_fields import tiling

    torch.manual_seed(0)
    net = UNetLike().eval()
    size = (side, side)
    start = time.perf_counter()
    analysis = rf_graph.analyse_module(net, "unet", size, HALF, None)
    plan = tiling.plan(analysis.fields, analysis.end_point, size, (tile, tile))
    plan_s = time.perf_counter() - start
    net = net.double()
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        whole_s = seconds(lambda: net(x))
    device = torch.device("cpu")

    def prove() -> tiling.TilingPlan:
        return tiling.prove(plan, lambda _: net, 3, size, torch.float64, device, 0, lambda: False)

    prove_s = seconds(prove)
    proven = prove()
    return (
        f"U-Net-like {side}x{side}",
        f"{tile}x{tile}",
        "/".join(str(h) for h in proven.halo),
        f"{proven.tiles[0]}x{proven.tiles[1]}",
        f"{plan_s * 1e3:.0f} ms",
        f"{whole_s * 1e3:.0f} ms",
        f"{prove_s * 1e3:.0f} ms",
        f"{prove_s / whole_s:.1f}x",
        f"{proven.max_abs_diff:.1e}",
    )


TILING_HEADERS = [
    "net",
    "tile",
    "halo t/b/l/r",
    "tiles",
    "plan",
    "whole pass",
    "tiled proof",
    "ratio",
    "max |diff|",
]


if __name__ == "__main__":
    import sys

    if "--upload" in sys.argv:
        print("fcn_resnet50 (64 x 64) as ONNX through the SDK: the whole file vs its graph without weights")
        print_table(upload_rows(), ["sent", "bytes", "request", "size ratio", "time ratio", "answer"])
    elif "--dense" in sys.argv:
        rest = sys.argv[sys.argv.index("--dense") + 1 :]
        side = int(rest[0]) if rest else 96
        print("segmentation nets and vision transformers by name: capture + analysis vs verify")
        print_table(dense_rows(side), DENSE_HEADERS)
    elif "--tiling" in sys.argv:
        print(
            "overlap-tile proof (whole + tiles, float64) vs one whole-image pass; ratio: proof / whole pass"
        )
        print_table([tiling_row()], TILING_HEADERS)
    else:
        main()
