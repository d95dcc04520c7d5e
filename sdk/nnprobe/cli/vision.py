"""``nnprobe rf``: receptive fields of a layer list or a model (VisionService)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from nnprobe.cli import rf_dense
from nnprobe.cli.output import (
    add_client_options,
    client_kwargs,
    format_value,
    print_json,
    print_table,
    to_jsonable,
)
from nnprobe.cli.parsing import UsageError, limit
from nnprobe.vision import Layer, VisionClient

LAYERS_HELP = """\
layer list: NAME:OPTIONS ..., OPTIONS comma-separated: kN or kHxW (kernel), sN (stride), dN (dilation),
pN, pHxW, pT-B-L-R, psame or pvalid (padding), conv|pool|other (kind; default pool when the name starts
with 'pool'), ceil. Example: conv1:k11,s4,p0 pool1:k3,s2 conv2:k5,p2"""


def _numbers(text: str, token: str) -> list[int]:
    if not re.fullmatch(r"-?\d+([x-]-?\d+)*", text):
        raise ValueError(f"bad numbers {text!r} in {token!r}")
    return [int(v) for v in re.split(r"(?<=\d)[x-]", text)]


def parse_layer(token: str) -> Layer:
    """``conv1:k11,s4,p0`` -> ``Layer``."""
    name, _, options = token.partition(":")
    if not name:
        raise ValueError(f"layer {token!r} has no name")
    values: dict = {"kind": "pool" if name.lower().startswith("pool") else "conv"}
    for option in filter(None, options.split(",")):
        key, rest = option[0], option[1:]
        if option in ("conv", "pool", "other"):
            values["kind"] = option
        elif option == "ceil":
            values["ceil_mode"] = True
        elif key == "p" and rest in ("same", "valid"):
            values["padding"] = rest
        elif key in "ksdp" and rest:
            numbers = _numbers(rest, token)
            if (key == "p" and len(numbers) not in (1, 2, 4)) or (key != "p" and len(numbers) not in (1, 2)):
                raise ValueError(f"wrong number of values in {option!r} of {token!r}")
            field = {"k": "kernel", "s": "stride", "d": "dilation", "p": "padding"}[key]
            values[field] = numbers[0] if len(numbers) == 1 else tuple(numbers)
        else:
            raise ValueError(f"unknown option {option!r} in {token!r}")
    if "kernel" not in values:
        raise ValueError(f"layer {token!r} needs a kernel (kN)")
    return Layer(name=name, **values)


def load_layers(path: str) -> list[Layer]:
    """A JSON file: a list of objects with the fields of ``nnprobe.vision.Layer``."""
    entries = json.loads(Path(path).read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path} must hold a JSON list of layers")
    layers = []
    for entry in entries:
        entry = dict(entry)
        for key in ("kernel", "stride", "dilation", "padding"):
            if isinstance(entry.get(key), list):
                entry[key] = tuple(entry[key])
        layers.append(Layer(**entry))
    return layers


def parse_unit(text: str) -> tuple[str, int, int]:
    """``conv5:6,6`` -> (layer, x, y)."""
    layer, _, position = text.rpartition(":")
    match = re.fullmatch(r"(\d{1,9}),(\d{1,9})", position)
    if not layer or not match:
        raise argparse.ArgumentTypeError(
            f"a unit is LAYER:X,Y (x the column, y the row, both >= 0), not {text!r}"
        )
    return layer, int(match.group(1)), int(match.group(2))


def parse_size(text: str) -> tuple[int, int]:
    """``N`` or ``HxW`` -> (height, width), each 1..65535."""
    match = re.fullmatch(r"(\d{1,5})(?:x(\d{1,5}))?", text)
    sides = [int(v) for v in match.groups(default=match.group(1))] if match else []
    if not sides or not all(0 < side <= 65535 for side in sides):
        raise argparse.ArgumentTypeError(f"an input size is N or HxW (each 1..65535), not {text!r}")
    return sides[0], sides[1]


def parse_model_option(text: str) -> tuple[str, object]:
    """``output_stride=8`` -> ("output_stride", 8); the value as JSON (numbers, true/false, lists), else
    as the text itself."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"a model option is KEY=VALUE, not {text!r}")
    try:
        parsed: object = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rf",
        help="receptive fields of a layer list or a model (VisionService.ComputeReceptiveField)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=LAYERS_HELP,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--layers", nargs="+", metavar="NAME:OPTIONS", help="a layer list (see below)")
    source.add_argument("--layers-file", metavar="JSON", help="a JSON list of layers")
    source.add_argument("--model", help="resnet50, inception_v3, vgg16, ... or a timm model name")
    source.add_argument("--onnx", metavar="FILE.onnx", help="an ONNX model, read from its graph")
    p.add_argument(
        "--model-version",
        type=int,
        default=0,
        metavar="N",
        help="version of a model of the server's model repository (default: the model's default version)",
    )
    p.add_argument(
        "--model-option",
        action="append",
        type=parse_model_option,
        default=[],
        metavar="KEY=VALUE",
        help="constructor option of a torchvision or timm --model (repeatable): output_stride=8, "
        "features_only=true, out_indices=[1,2], img_size=384; VALUE is read as JSON, else as text",
    )
    p.add_argument(
        "--send-weights",
        action="store_true",
        help="send the --onnx model with its weights' values (by default only its graph goes, which is all "
        "the analysis reads, unless --erf needs the weights)",
    )
    p.add_argument("--strict", action="store_true", help="refuse misaligned merges and global context")
    p.add_argument("--end-point", help="last layer analysed (default: last layer / last spatial feature map)")
    p.add_argument("--input-size", type=parse_size, metavar="N|HxW", help="input size (models: 224, 299)")
    limit(
        p.add_argument("--origin", type=float, help="coordinate of the first pixel's centre (default 0.5)"),
        low=None,
    )
    p.add_argument("--unit", action="append", type=parse_unit, default=[], metavar="LAYER:X,Y")
    p.add_argument("--verify", action="store_true", help="prove each unit's box by back-propagation")
    p.add_argument("--erf", action="store_true", help="estimate the effective receptive field")
    p.add_argument("--erf-samples", type=int, default=0, help="random inputs for --erf (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --erf inputs and weights (with --erf)")
    p.add_argument("--plot", metavar="FILE.png", help="save a picture of the units' fields")
    p.add_argument("--image", help="draw the picture on this image (its size is the input size)")
    p.add_argument("--all-layers", action="store_true", help="list point-wise layers of models too")
    rf_dense.add_options(p, parse_size)
    add_client_options(p, "vision")
    p.set_defaults(handler=run_rf)


def _axis_text(height: float, width: float) -> str:
    return format_value(height) if height == width else f"{format_value(height)}x{format_value(width)}"


#: Options that mean something only with another one: option -> (attribute, the option it needs).
DEPENDENT = {
    "--model-version": ("model", "--model"),
    "--model-option": ("model", "--model"),
    "--send-weights": ("onnx", "--onnx"),
    "--erf-samples": ("erf", "--erf"),
    "--seed": ("erf", "--erf"),
}


def _check_dependent(args: argparse.Namespace) -> None:
    """Refuse an option given without the option it goes with (it would be ignored in silence)."""
    for option, (needed, needed_option) in DEPENDENT.items():
        if getattr(args, option[2:].replace("-", "_")) and not getattr(args, needed):
            raise UsageError(f"{option} goes with {needed_option}")


def run_rf(args: argparse.Namespace) -> int:
    _check_dependent(args)
    layers = None
    if args.image is not None and not Path(args.image).is_file():
        raise UsageError(f"image not found: {args.image}")
    if args.layers:
        try:
            layers = [parse_layer(token) for token in args.layers]
        except ValueError as error:
            raise UsageError(str(error)) from None
    elif args.layers_file:
        layers = load_layers(args.layers_file)
    dense = rf_dense.request_kwargs(args)
    with VisionClient(args.address, **client_kwargs(args)) as client:
        result = client.compute_receptive_field(
            layers,
            model=args.model,
            end_point=args.end_point,
            input_size=args.input_size,
            first_pixel_center=args.origin,
            units=args.unit,
            verify=args.verify,
            effective_field=args.erf,
            erf_samples=args.erf_samples,
            erf_seed=args.seed,
            model_seed=args.seed,
            plot=bool(args.plot),
            image=args.image,
            strict=args.strict,
            onnx=args.onnx,
            model_version=args.model_version,
            **dense,
            model_options=dict(args.model_option),
            send_weights=True if args.send_weights else None,
        )
    if args.plot:
        result.save_plot(args.plot)
    if args.json:
        data = to_jsonable(result)
        data["plot_png"] = args.plot  # the picture's file, not its bytes
        print_json(data)
        return 0
    _print_result(result, args)
    return 0


def _print_result(result, args: argparse.Namespace) -> None:
    h, w = result.input_size
    source = result.model or "layer list"
    print(f"{source}: input {h}x{w}, first pixel centre {format_value(result.first_pixel_center)}")
    if result.global_context:
        where = f" ({result.global_context_module})" if result.global_context_module else ""
        print(f"global context after {result.global_context}{where}: the fields below are local")
    for layer, axis, reference, path, offset in result.misaligned_merges:
        print(f"misaligned merge at {layer}: along the {axis} {path} is {offset:g} px from {reference}")
    _print_layers(result, args.all_layers)
    if result.units:
        print()
        _print_units(result.units)
    if result.effective_field is not None:
        print()
        _print_effective_field(result.effective_field)
        if result.effective_field.protocol is not None:
            rf_dense.print_protocol(result.effective_field.protocol)
    if result.tiling is not None:
        print()
        rf_dense.print_tiling(result.tiling)
    if args.plot:
        print(f"picture saved to {args.plot}")


def _print_layers(result, all_layers: bool) -> None:
    """The layer table; for a model, point-wise layers (kind "other") only with ``all_layers``."""
    shown = [
        f
        for f in result.layers
        if all_layers or not result.model or f.kind != "other" or f.name == result.end_point
    ]
    print_table(
        [
            (
                f.name,
                f.kind,
                _axis_text(f.height.size, f.width.size),
                _pair_text(_jump_text(f.height), _jump_text(f.width)),
                _pair_text(_receptive_text(f.height), _receptive_text(f.width)),
                _axis_text(f.height.start, f.width.start),
                _axis_text(f.height.effective_padding, f.width.effective_padding),
            )
            for f in shown
        ],
        ["layer", "kind", "size", "jump", "receptive", "start", "eff. padding"],
    )
    if len(shown) < len(result.layers):
        print(f"({len(result.layers) - len(shown)} point-wise layers hidden; --all-layers shows them)")


def _jump_text(axis) -> str:
    """The jump, as a fraction (1/2) when it is not a whole number of pixels."""
    numerator, denominator = axis.jump_fraction
    return f"{numerator}/{denominator}" if denominator > 1 else format_value(axis.jump)


def _receptive_text(axis) -> str:
    """The receptive size; where the units' fields differ, "varies min..max /period"."""
    if not axis.varies:
        return format_value(axis.receptive_size)
    period = f" /{axis.period}" if axis.period else ""
    return f"varies {axis.receptive_min}..{axis.receptive_max}{period}"


def _pair_text(height: str, width: str) -> str:
    return height if height == width else f"{height} x {width}"


def _print_units(units) -> None:
    """One row per unit: its field's extent along both axes, the pixels it covers, and the proof."""
    rows = []
    for u in units:
        v = u.verification
        rows.append(
            (
                f"{u.layer} ({u.x},{u.y})",
                f"{format_value(u.vertical.start)} / {format_value(u.vertical.center)} / "
                f"{format_value(u.vertical.end)}",
                f"{format_value(u.horizontal.start)} / {format_value(u.horizontal.center)} / "
                f"{format_value(u.horizontal.end)}",
                f"{u.rows[0]}..{u.rows[1]}",
                f"{u.columns[0]}..{u.columns[1]}",
                "-" if v is None else ("yes" if v.matches else f"NO: {v.rows} {v.columns}"),
            )
        )
    print_table(
        rows,
        [
            "unit (x,y)",
            "rows start/center/end",
            "cols start/center/end",
            "pixel rows",
            "pixel cols",
            "verified",
        ],
    )


def _print_effective_field(erf) -> None:
    print(
        f"effective field of {erf.layer} ({erf.x},{erf.y}) over {erf.num_samples} inputs: "
        f"sigma {erf.sigma_height:.2f} x {erf.sigma_width:.2f} px, centre "
        f"({erf.center_vertical:.2f}, {erf.center_horizontal:.2f}); 95% of the gradient in "
        f"{erf.pixels_for_95_percent} of {erf.theoretical_pixels} pixels "
        f"({100 * erf.share_for_95_percent:.1f}% of the theoretical field)"
    )
