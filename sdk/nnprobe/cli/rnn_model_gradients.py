"""``nnprobe rnn gradients --model NAME[:VERSION]``: the gradient flow of a repository model (a
``recurrent_cell`` or ``sequence_model``), on drawn inputs, an ``.npy`` sequence or token ids."""

from __future__ import annotations

import argparse

from nnprobe.cli.arrays import load_array
from nnprobe.cli.output import client_kwargs, print_json, print_table
from nnprobe.cli.parsing import UsageError
from nnprobe.progress import ProgressCallback
from nnprobe.sequence import SequenceClient

#: Options of built cells (their argparse destinations), which a --model run leaves at their defaults.
BUILT_CELL_OPTIONS = (
    "cells",
    "rho",
    "hidden_size",
    "input_size",
    "inputs",
    "input_scale",
    "weights",
    "init",
    "init_scale",
    "forget_bias",
    "plot",
)
#: Largest version number a NAME:VERSION reference may carry (an int64 on the wire).
INT_MAX = 2**63 - 1


def model_reference(text: str) -> tuple[str, int]:
    """``NAME[:VERSION]`` -> (name, version); version 0 (the latest) when none is named."""
    name, colon, version = text.rpartition(":")
    if not colon:
        return text, 0
    if not (version.isascii() and version.isdigit() and int(version) <= INT_MAX) or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME or NAME:VERSION with a version number")
    return name, int(version)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options of ``rnn gradients`` that analyse a repository model instead of built cells (added
    after the built cells' options, whose defaults are kept to tell a given option from a default)."""
    p.set_defaults(built_cell_defaults={dest: p.get_default(dest) for dest in BUILT_CELL_OPTIONS})
    p.add_argument(
        "--model",
        type=model_reference,
        metavar="NAME[:VERSION]",
        help="analyse this repository model (recurrent_cell or sequence_model; latest version by default) "
        "instead of built cells; goes with -T, --seed, --dtype, --regime-tolerance, --random-initial-state",
    )
    p.add_argument("--input-file", help="with --model: .npy file of the input sequence (T, I)")
    p.add_argument(
        "--token-ids", type=int, nargs="+", help="with --model: token ids fed to a model with an embedding"
    )


def check_model_options(args: argparse.Namespace) -> None:
    """Refuse --input-file or --token-ids without --model, and built-cell options with it (either would
    be ignored in silence)."""
    for option in ("--input-file", "--token-ids"):
        if getattr(args, option[2:].replace("-", "_")) is not None and not args.model:
            raise UsageError(f"{option} goes with --model")
    if args.model:
        for dest, default in args.built_cell_defaults.items():
            if getattr(args, dest) != default:
                raise UsageError(
                    f"--{dest.replace('_', '-')} describes built cells; leave it out with --model"
                )
        if args.input_file is not None and args.token_ids is not None:
            raise UsageError("--input-file and --token-ids: give one of them")


def run_model_gradients(args: argparse.Namespace, update: ProgressCallback) -> object:
    """The analysis ``args`` ask for with ``--model``: -T is sent only when neither --input-file nor
    --token-ids gives the sequence."""
    name, version = args.model
    inputs = load_array(args.input_file, "--input-file") if args.input_file else None
    given = inputs is not None or args.token_ids is not None
    with SequenceClient(args.address, **client_kwargs(args)) as client:
        return client.analyze_gradients(
            progress=False,
            model=name,
            model_version=version,
            inputs=inputs,
            token_ids=args.token_ids,
            sequence_length=0 if given else args.sequence_length,
            seed=args.seed,
            dtype=args.dtype,
            regime_tolerance=args.regime_tolerance,
            random_initial_state=args.random_initial_state,
            on_progress=update,
        )


def print_model_flow(result, every: int, as_json: bool) -> None:
    """The model's summary (what was measured, rate, regime), then its norms at about ten distances."""
    flow = result.model_flow
    if as_json:
        print_json(result)
        return
    measured = {
        "state": "|dh_T/dh_k|_2 (products of the cell's per-step Jacobians)",
        "inputs": "|dy_T/dx_k|_2 and |dL/dx_k|_2, L = sum(y_T)",
        "embedding": "|dy_T/de_k|_2 and |dL/de_k|_2 at the embedding output, L = sum(y_T)",
    }.get(flow.measured, flow.measured)
    print(
        f"{flow.model} v{flow.model_version} ({flow.task}): {measured}; T={result.sequence_length}, "
        f"H={result.hidden_size}, I={result.input_size} ({result.seconds:.2f}s on the server)"
    )
    print(f"rate {flow.growth_rate:.6g} per step: {flow.regime}")
    if flow.cell_growth_rate is not None:
        print(f"cell state: rate {flow.cell_growth_rate:.6g} per step: {flow.cell_regime}")
    columns = [("|jacobian|", flow.jacobian_norms)]
    for title, values in (
        ("|dc_T/dc_k|", flow.cell_state_norms),
        ("|step jacobian|", flow.step_norms),
        ("|dL/dx_k|", flow.loss_gradient_norms),
    ):
        if values is not None:
            columns.append((title, values))
    distances = flow.distances.tolist()
    every = every or max(1, len(distances) // 10)
    picks = [i for i, d in enumerate(distances) if d % every == 0 or i == len(distances) - 1]
    rows = [(distances[i], *(float(v[i]) for _, v in columns)) for i in picks]
    print_table(rows, ["T-k", *(title for title, _ in columns)])
