"""``nnprobe attention equivariance|pooling --model NAME[:VERSION]``: the symmetry certificate of a
repository token model (its deviation judged against its own float32-vs-float64 noise)."""

from __future__ import annotations

import argparse
from typing import Any

from nnprobe.cli.output import print_fields
from nnprobe.cli.parsing import UsageError

INT64_MAX = 2**63 - 1
#: Options of a built attention layer (argparse dest -> flag, default): refused with --model.
LAYER_OPTIONS = {
    "sequence_length": ("-T", 5),
    "model_dim": ("-D", 8),
    "weights": ("--weights", None),
    "heads": ("--heads", 1),
    "scale": ("--scale", None),
    "softmax": ("--softmax", "row"),
    "positional_encoding": ("--positional-encoding", "none"),
    "causal": ("--causal", False),
    "dtype": ("--dtype", "float64"),
    "pooling": ("--pooling", "mean"),
}


def model_reference(text: str) -> tuple[str, int]:
    """``NAME[:VERSION]`` -> (name, version); version 0 (the latest) when none is named."""
    name, colon, version = text.rpartition(":")
    if not colon:
        return text, 0
    if not (version.isascii() and version.isdigit() and int(version) <= INT64_MAX) or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME or NAME:VERSION with a version number")
    return name, int(version)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--noise-ratio-threshold``."""
    parser.add_argument(
        "--model",
        type=model_reference,
        metavar="NAME[:VERSION]",
        help="certify a repository token model (X (B, T, D), tokens on axis 1) instead of a built layer; "
        "--x is then a (B, T, D) .npy file (token ids (B, T) for a model with a vocabulary), and -T/-D and "
        "the layer options are not used",
    )
    parser.add_argument(
        "--noise-ratio-threshold",
        type=float,
        help="with --model: holds when deviation / noise <= this (default 10)",
    )


def check_model_options(args: argparse.Namespace) -> None:
    """Refuse ``--noise-ratio-threshold`` without ``--model``, and a built layer's options with it (either
    would be ignored in silence)."""
    if args.model is None:
        if args.noise_ratio_threshold is not None:
            raise UsageError("--noise-ratio-threshold goes with --model")
        return
    for dest, (flag, default) in LAYER_OPTIONS.items():
        if getattr(args, dest, default) != default:
            raise UsageError(f"{flag} describes a built attention layer; leave it out with --model")


def model_kwargs(args: argparse.Namespace, x: Any) -> dict[str, Any]:
    """The SDK arguments of a ``--model`` check (after ``check_model_options``)."""
    name, version = args.model
    return {
        "model": name,
        "model_version": version,
        "x": x,
        "seed": args.seed,
        "noise_ratio_threshold": args.noise_ratio_threshold,
        "strategy": args.strategy,
        "num_samples": args.samples,
        "tolerance": args.tolerance,
    }


def certificate_fields(certificate: Any) -> list[tuple[str, Any]]:
    """The lines of a certificate in the text output."""
    node = certificate.first_breaking_node
    rows: list[tuple[str, Any]] = [
        ("model", f"{certificate.model} version {certificate.model_version}"),
        ("input shape (B, T, D)", certificate.input_shape),
        ("noise |f32(X) - f64(X)|", f"{certificate.noise:.3g} (floor {certificate.noise_floor:.3g})"),
        ("deviation (float32)", f"{certificate.deviation:.3g}"),
        ("deviation (float64)", f"{certificate.deviation_float64:.3g}"),
        ("ratio deviation / noise", f"{certificate.ratio:.3g} (holds when <= {certificate.threshold:g})"),
    ]
    if node is not None:
        rows.append(("first breaking node", f"{node.name} ({node.op} {node.target}), shape {node.shape}"))
        rows.append(("its deviation (float64)", f"{node.deviation:.3g} > tolerance {node.tolerance:.3g}"))
    return rows


def print_certificate(result: Any, title: str) -> None:
    """The text output of a ``--model`` check."""
    print(title)
    print_fields(
        [
            ("holds", result.holds),
            (
                "permutations checked",
                f"{result.permutations_checked:,}" + (" (all)" if result.exhaustive else " (sampled)"),
            ),
            ("worst permutation", result.worst_permutation),
            *certificate_fields(result.certificate),
            ("server time", f"{result.seconds * 1000:.1f} ms"),
        ]
    )
