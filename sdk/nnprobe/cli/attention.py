"""``nnprobe attention equivariance|pooling|ffn``."""

from __future__ import annotations

import argparse

import numpy as np

from nnprobe.attention import ACTIVATIONS, POOLINGS, SOFTMAX_MODES, STRATEGIES, AttentionClient
from nnprobe.cli.arrays import load_array
from nnprobe.cli.attention_certificate import (
    add_model_options,
    check_model_options,
    model_kwargs,
    print_certificate,
)
from nnprobe.cli.output import add_client_options, client_kwargs, print_fields, print_json
from nnprobe.cli.repository_models import add_model_commands


def _load_array(path: str | None, option: str) -> np.ndarray | None:
    """A .npy file, or None."""
    return None if path is None else load_array(path, option)


def _attention_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-T", "--sequence-length", type=int, default=5, help="positions T (default 5)")
    parser.add_argument("-D", "--model-dim", type=int, default=8, help="model width D (default 8)")
    parser.add_argument("--x", help=".npy file with X (T, D); overrides -T/-D")
    parser.add_argument("--weights", nargs=3, metavar=("WQ", "WK", "WV"), help=".npy files, each (D, D)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--scale", type=float, help="score divisor (default sqrt(D/heads))")
    parser.add_argument("--softmax", choices=SOFTMAX_MODES, default="row")
    parser.add_argument("--positional-encoding", choices=("none", "sinusoidal"), default="none")
    parser.add_argument("--causal", action="store_true", help="apply a causal mask")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto")
    parser.add_argument("--samples", type=int, default=0, help="random permutations when sampling")
    parser.add_argument("--tolerance", type=float, help="relative (default 1e-9, 1e-4 in float32; 0: exact)")
    add_model_options(parser)


def _attention_kwargs(args: argparse.Namespace) -> dict:
    check_model_options(args)
    x = _load_array(args.x, "--x")
    if args.model is not None:
        return model_kwargs(args, x)
    return {
        "x": x,
        "sequence_length": 0 if x is not None else args.sequence_length,
        "model_dim": 0 if x is not None else args.model_dim,
        "seed": args.seed,
        "weights": [load_array(p, "--weights") for p in args.weights] if args.weights else None,
        "heads": args.heads,
        "scale": args.scale,
        "softmax": args.softmax,
        "positional_encoding": args.positional_encoding,
        "causal_mask": args.causal,
        "dtype": args.dtype,
        "strategy": args.strategy,
        "num_samples": args.samples,
        "tolerance": args.tolerance,
    }


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("attention", help="self-attention checks (AttentionService)")
    commands = group.add_subparsers(dest="attention_command", required=True, metavar="CHECK")
    add_model_commands(commands, "attention", AttentionClient, "token_model")

    p = commands.add_parser("equivariance", help="is s(PX) == P s(X) for every permutation P?")
    _attention_options(p)
    add_client_options(p, "attention")
    p.set_defaults(handler=run_equivariance)

    p = commands.add_parser("pooling", help="is pool(s(PX)) == pool(s(X))?")
    _attention_options(p)
    p.add_argument("--pooling", choices=POOLINGS, default="mean")
    add_client_options(p, "attention")
    p.set_defaults(handler=run_pooling)

    p = commands.add_parser("ffn", help="nn.Linear vs nn.Conv1d(kernel_size=1) feed-forward stacks")
    p.add_argument("--widths", type=int, nargs="+", help="input hidden... output (default D 4D D)")
    p.add_argument("-B", "--batch-size", type=int, default=4)
    p.add_argument("-T", "--sequence-length", type=int, default=16)
    p.add_argument("-D", "--model-dim", type=int, default=64)
    p.add_argument("--activation", choices=ACTIVATIONS, default="between")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--tolerance", type=float, help="absolute (default 1e-6 float32, 1e-12 float64; 0: exact)")
    p.add_argument("--repeats", type=int, default=5, help="timed forward passes per stack")
    add_client_options(p, "attention")
    p.set_defaults(handler=run_ffn)


def _print_check(result, args: argparse.Namespace, title: str) -> int:
    if args.json:
        print_json(result)
    elif result.certificate is not None:
        print_certificate(result, f"{result.certificate.model}, {title}")
    else:
        print(title)
        print_fields(
            [
                ("holds", result.holds),
                (
                    "permutations checked",
                    f"{result.permutations_checked:,}" + (" (all)" if result.exhaustive else " (sampled)"),
                ),
                ("max deviation", result.max_deviation),
                ("mean deviation", result.mean_deviation),
                ("tolerance", result.tolerance),
                ("worst permutation", result.worst_permutation),
                ("server time", f"{result.seconds * 1000:.1f} ms"),
            ]
        )
    return 0


def run_equivariance(args: argparse.Namespace) -> int:
    with AttentionClient(args.address, **client_kwargs(args)) as client:
        result = client.check_permutation_equivariance(**_attention_kwargs(args))
    title = "permutation equivariance: " + ("f(PX) == P f(X)" if args.model else "s(PX) == P s(X)")
    return _print_check(result, args, ("self-attention " if args.model is None else "") + title)


def run_pooling(args: argparse.Namespace) -> int:
    with AttentionClient(args.address, **client_kwargs(args)) as client:
        if args.model is not None:
            result = client.check_pooling_invariance(**_attention_kwargs(args))
            return _print_check(result, args, "pooling invariance: f(PX) == f(X)")
        result = client.check_pooling_invariance(pooling=args.pooling, **_attention_kwargs(args))
    return _print_check(result, args, f"{args.pooling} pooling invariance: pool(s(PX)) == pool(s(X))")


def run_ffn(args: argparse.Namespace) -> int:
    with AttentionClient(args.address, **client_kwargs(args)) as client:
        result = client.check_feed_forward_equivalence(
            widths=args.widths or (),
            batch_size=args.batch_size,
            sequence_length=args.sequence_length,
            model_dim=0 if args.widths else args.model_dim,
            activation=args.activation,
            seed=args.seed,
            dtype=args.dtype,
            tolerance=args.tolerance,
            timing_repeats=args.repeats,
        )
    if args.json:
        print_json(result)
        return 0
    print("position-wise feed-forward: nn.Linear vs nn.Conv1d(kernel_size=1)")
    print_fields(
        [
            ("equivalent", result.equivalent),
            ("widths", result.widths),
            ("max deviation", result.max_deviation),
            ("tolerance", result.tolerance),
            ("parameters (Linear / Conv1d)", f"{result.linear_parameters:,} / {result.conv_parameters:,}"),
            ("forward time Linear", f"{result.linear_forward_seconds * 1e3:.3f} ms"),
            ("forward time Conv1d", f"{result.conv_forward_seconds * 1e3:.3f} ms"),
        ]
    )
    return 0
