"""``nnprobe classify`` and ``nnprobe models``: ImageNet classification (VisionService)."""

from __future__ import annotations

import argparse
import sys

from nnprobe.cli.output import add_client_options, client_kwargs, print_json, print_table
from nnprobe.vision import VisionClient


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classify", help="ImageNet top-k classes of images (VisionService.Classify)")
    p.add_argument("images", nargs="+", metavar="IMG", help="image files (JPEG, PNG, WebP, BMP)")
    p.add_argument("--model", help="model name from `nnprobe models` (default: the server's default)")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    add_client_options(p, "vision")
    p.set_defaults(handler=run_classify)

    p = subparsers.add_parser("models", help="classifiers the server can serve (VisionService.ListModels)")
    add_client_options(p, "vision")
    p.set_defaults(handler=run_models)


def run_classify(args: argparse.Namespace) -> int:
    with VisionClient(args.address, **client_kwargs(args)) as client:
        result = client.classify(args.images, model=args.model, top_k=args.top_k)
    if args.json:
        print_json(result, out=sys.stdout)
        return 0
    print(f"model {result.model} (sha256 {result.model_version[:12]}), {result.total_seconds:.3f}s")
    rows = []
    for image in result:
        for rank, score in enumerate(image.top, 1):
            rows.append(
                (image.name if rank == 1 else "", rank, score.index, score.label, f"{score.probability:.4f}")
            )
    print_table(rows, ["image", "rank", "class", "label", "probability"], out=sys.stdout)
    return 0


def run_models(args: argparse.Namespace) -> int:
    with VisionClient(args.address, **client_kwargs(args)) as client:
        models = client.list_models()
    if args.json:
        print_json(models, out=sys.stdout)
        return 0
    rows = []
    for m in models:
        p = m.preprocessing
        rows.append(
            (
                m.name + (" (default)" if m.is_default else ""),
                m.architecture,
                "yes" if m.weights_present else f"no: {m.weights_file_name}",
                f"{p.crop[0]}x{p.crop[1]}",
                f"resize {p.resize} {p.interpolation}, crop {p.crop[0]}",
                m.num_classes,
                m.version[:12] or "-",
            )
        )
    headers = ["model", "architecture", "weights", "input", "preprocessing", "classes", "sha256"]
    print_table(rows, headers, out=sys.stdout)
    missing = [m for m in models if not m.weights_present]
    if missing:
        print(f"\nmissing weights are looked for in: {', '.join(missing[0].searched)}")
    return 0
