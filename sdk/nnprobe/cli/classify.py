"""``nnprobe classify``: classification with a built-in or repository model (VisionService)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnprobe.cli.output import add_client_options, client_kwargs, print_json, print_table
from nnprobe.cli.parsing import UsageError, limit
from nnprobe.vision import VisionClient


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classify", help="top-k classes of images (VisionService.Classify)")
    p.add_argument("images", nargs="+", metavar="IMG", help="image files (JPEG, PNG, WebP, BMP)")
    p.add_argument("--model", help="model name from `nnprobe models` (default: the server's default)")
    limit(p.add_argument("--top-k", type=int, default=5, help="classes per image, >= 1 (default 5)"), low=1)
    p.add_argument("--model-version", type=int, default=0, help="repository version (default: the model's)")
    add_client_options(p, "vision")
    p.set_defaults(handler=run_classify)


def run_classify(args: argparse.Namespace) -> int:
    for image in args.images:
        if not Path(image).is_file():
            raise UsageError(f"image not found: {image}")
    with VisionClient(args.address, **client_kwargs(args)) as client:
        result = client.classify(
            args.images, model=args.model, top_k=args.top_k, model_version=args.model_version
        )
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
