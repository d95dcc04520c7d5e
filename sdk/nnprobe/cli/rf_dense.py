"""``nnprobe rf`` options and output for dense maps: the overlap-tile plan (``--tile HxW``,
``--prove-tiling``) and the effective field of your own model (``--erf-weights``, ``--erf-image``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nnprobe.cli.output import format_value, print_table
from nnprobe.cli.parsing import UsageError


def add_options(p: argparse.ArgumentParser, parse_size) -> None:
    """The options on ``nnprobe rf``'s parser; ``parse_size`` reads ``N`` or ``HxW``."""
    p.add_argument(
        "--tile",
        type=parse_size,
        metavar="N|HxW",
        help="plan overlap-tile prediction of the end point's map for tiles of this size: the halo each "
        "tile needs, the stride and the overlap",
    )
    p.add_argument(
        "--prove-tiling",
        action="store_true",
        help="with --tile: run the network tiled and whole on a random input, print the largest difference",
    )
    p.add_argument(
        "--erf-weights",
        choices=("random", "trained"),
        help="weights of --erf (default: trained for a repository model, random otherwise)",
    )
    p.add_argument(
        "--erf-image",
        action="append",
        default=[],
        metavar="FILE",
        help="average --erf over this image instead of random inputs (repeatable)",
    )


#: Options that mean something only with another one: option -> (attribute, the option it needs).
DEPENDENT = {
    "--prove-tiling": ("tile", "--tile"),
    "--erf-weights": ("erf", "--erf"),
    "--erf-image": ("erf", "--erf"),
}


def request_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The SDK keywords of these options; ``UsageError`` for a missing image or a lone dependent option."""
    for option, (needed, needed_option) in DEPENDENT.items():
        if getattr(args, option[2:].replace("-", "_")) and not getattr(args, needed):
            raise UsageError(f"{option} goes with {needed_option}")
    for image in args.erf_image:
        if not Path(image).is_file():
            raise UsageError(f"image not found: {image}")
    return {
        "tiling": args.tile,
        "prove_tiling": args.prove_tiling,
        "erf_weights": args.erf_weights,
        "erf_images": [Path(image) for image in args.erf_image],
    }


def _pair(pair: tuple[int, int]) -> str:
    return f"{pair[0]}x{pair[1]}"


def print_tiling(plan) -> None:
    """One row: the tile, its halo on each side, the stride, overlap and window, the alignment, the proof."""
    top, bottom, left, right = plan.halo
    proof = "-"
    if plan.proved:
        proof = f"max |diff| {plan.max_abs_diff:.3g} ({plan.dtype}, {plan.weights} weights)"
    print(f"tiling of {plan.layer} (tiles start at multiples of {_pair(plan.alignment)} px):")
    print_table(
        [
            (
                _pair(plan.tile),
                f"{top}/{bottom}/{left}/{right}",
                _pair(plan.stride),
                _pair(plan.overlap),
                _pair(plan.window),
                _pair(plan.tiles),
                proof,
            )
        ],
        ["tile", "halo t/b/l/r", "stride", "overlap", "window", "tiles", "tiled vs whole"],
    )


def print_protocol(protocol) -> None:
    """How the effective field was measured."""
    seed = f", seed {protocol.seed}" if protocol.inputs != "images" else ""
    weights = protocol.weights + (f" (seed {protocol.weight_seed})" if protocol.weights == "random" else "")
    print(
        f"protocol: {protocol.num_samples} x {protocol.inputs}{seed} at {_pair(protocol.resolution)}, "
        f"{weights} weights, {protocol.dtype}"
        + (f", version {format_value(protocol.model_version)}" if protocol.model_version else "")
    )
