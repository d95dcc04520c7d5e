"""``nnprobe rnn forward|gradients|truncation`` (SequenceService)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from nnprobe.cli.arrays import load_archive, load_array
from nnprobe.cli.output import (
    ProgressBar,
    add_client_options,
    client_kwargs,
    print_fields,
    print_json,
    print_table,
)
from nnprobe.cli.parsing import UsageError, limit
from nnprobe.cli.repository_models import add_model_commands
from nnprobe.cli.rnn_model_gradients import (
    add_model_options,
    check_model_options,
    print_model_flow,
    run_model_gradients,
)
from nnprobe.progress import Progress, ProgressCallback
from nnprobe.sequence import CELLS, INIT_SCHEMES, INPUT_DISTRIBUTIONS, SequenceClient


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("rnn", help="recurrent networks and gradient flow (SequenceService)")
    commands = group.add_subparsers(dest="rnn_command", required=True, metavar="COMMAND")
    _add_forward(commands)
    _add_gradients(commands)
    _add_truncation(commands)
    add_model_commands(commands, "sequence", SequenceClient, "recurrent_cell and sequence_model")


def _add_forward(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("forward", help="run a recurrent cell; show the state change at every step")
    p.add_argument("--cell", choices=CELLS, default="rnn_tanh")
    p.add_argument("--inputs", help=".npy file with the inputs (T, B, D); default: ones (T, 1, D)")
    limit(
        p.add_argument("-T", "--sequence-length", type=int, default=10, help="T without --inputs (def. 10)"),
        low=1,
        high=100_000,
    )
    limit(
        p.add_argument("-D", "--input-size", type=int, default=3, help="D without --inputs (default 3)"),
        low=1,
        high=100_000,
    )
    p.add_argument("-H", "--hidden-size", type=int, default=3, help="H for drawn weights (default 3)")
    p.add_argument("--weights", help=".npz file of weights under PyTorch's names (weight_ih_l0, ...)")
    p.add_argument("--output-size", type=int, default=0, help="add an output layer of this width")
    p.add_argument("--init", choices=INIT_SCHEMES, default="pytorch")
    p.add_argument("--init-scale", type=float, help="multiplies drawn weights (default 1; 0: all zero)")
    limit(
        p.add_argument("--forget-bias", type=float, default=0.0, help="added to drawn LSTM forget bias"),
        low=None,
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--settle-tolerance", type=float, help="default 1e-6; 0: no change at all")
    p.add_argument("--save", help="write hidden states (and cell states, outputs) to this .npz file")
    add_client_options(p, "sequence")
    p.set_defaults(handler=run_forward)


def _add_gradients(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("gradients", help="|dh_T/dh_k| against the bound, per cell and spectral radius")
    p.add_argument("--cells", nargs="+", choices=CELLS, default=["rnn_tanh"])
    p.add_argument("--rho", type=float, nargs="+", default=[], help="target spectral radii (a sweep)")
    p.add_argument("-H", "--hidden-size", type=int, default=32)
    p.add_argument("-T", "--sequence-length", type=int, default=50)
    p.add_argument("-D", "--input-size", type=int, default=0, help="default H")
    p.add_argument("--inputs", choices=INPUT_DISTRIBUTIONS, default="normal", help="input distribution")
    p.add_argument("--input-scale", type=float, help="input std or half-width (default 1; 0: zero inputs)")
    p.add_argument("--weights", help=".npz file of weights to analyse (one cell)")
    p.add_argument("--init", choices=INIT_SCHEMES, default="pytorch")
    p.add_argument("--init-scale", type=float, help="multiplies drawn weights before rescaling (default 1)")
    limit(
        p.add_argument("--forget-bias", type=float, default=0.0, help="added to drawn LSTM forget bias"),
        low=None,
    )
    p.add_argument("--regime-tolerance", type=float, help="stable band around 1 (default 0.01)")
    p.add_argument("--random-initial-state", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--every", type=int, default=0, help="print every N-th distance (default: about 10 rows)")
    p.add_argument("--plot", help="save the PNG of log |dh_T/dh_k| against T - k here")
    add_model_options(p)
    add_client_options(p, "sequence")
    p.set_defaults(handler=run_gradients)


def _add_truncation(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("truncation", help="memory held for backward: detach() between chunks or not")
    p.add_argument("-K", "--chunk-counts", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--vocab-size", type=int, default=10_000)
    p.add_argument("--embed-size", type=int, default=128)
    p.add_argument("-H", "--hidden-size", type=int, default=1024)
    p.add_argument("-B", "--batch-size", type=int, default=20)
    p.add_argument("-L", "--chunk-length", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", help="save the PNG of memory against K here")
    add_client_options(p, "sequence")
    p.set_defaults(handler=run_truncation)


def _progress(label: str) -> tuple[dict[str, ProgressBar], ProgressCallback]:
    """A progress callback that opens its bar on the first event (the total is known then)."""
    state: dict[str, ProgressBar] = {}

    def update(progress: Progress) -> None:
        if "bar" not in state:
            state["bar"] = ProgressBar(progress.total, label)
        state["bar"].update(progress.done, progress.message)

    return state, update


def _close(state: dict) -> None:
    if "bar" in state:
        state["bar"].close()


def _save_plot(png: bytes | None, path: str | None) -> None:
    if path and png:
        Path(path).write_bytes(png)
        print(f"plot written to {path}")


def _load_weights(path: str | None) -> dict[str, np.ndarray] | None:
    if path is None:
        return None
    return load_archive(path, "--weights")


def run_forward(args: argparse.Namespace) -> int:
    if args.inputs:
        inputs = load_array(args.inputs, "--inputs")
    else:
        inputs = np.ones((args.sequence_length, 1, args.input_size))
    weights = _load_weights(args.weights)
    with SequenceClient(args.address, **client_kwargs(args)) as client:
        result = client.run_recurrent(
            inputs,
            cell=args.cell,
            hidden_size=0 if weights else args.hidden_size,
            weights=weights,
            output_size=args.output_size,
            init=args.init,
            init_scale=args.init_scale,
            forget_bias=args.forget_bias,
            seed=args.seed,
            dtype=args.dtype,
            settle_tolerance=args.settle_tolerance,
        )
    if args.save:
        arrays = {"hidden_states": result.hidden_states, "step_changes": result.step_changes}
        if result.cell_states is not None:
            arrays["cell_states"] = result.cell_states
        if result.outputs is not None:
            arrays["outputs"] = result.outputs
        np.savez(args.save, **arrays)
    if args.json:
        print_json(result)
        return 0
    steps, batch, _ = result.hidden_states.shape
    print(f"{args.cell}: T={steps}, B={batch}, H={result.hidden_states.shape[2]} (sequence 0 shown)")
    shown = result.outputs if result.outputs is not None else result.hidden_states
    name = "y_t" if result.outputs is not None else "h_t"
    rows = [
        (t + 1, result.step_changes[t, 0], np.array2string(shown[t, 0], precision=5, max_line_width=70))
        for t in range(steps)
    ]
    print_table(rows, ["t", "|h_t - h_(t-1)|", name])
    for b, step in enumerate(result.settled_at):
        when = f"settled from step {step}" if step > 0 else "still moving at step T"
        print(f"sequence {b}: {when} (tolerance {result.settle_tolerance:g})")
    return 0


def run_gradients(args: argparse.Namespace) -> int:
    if args.model is not None and not args.model[0]:  # --model '' would analyse built cells in silence
        raise UsageError("--model: give a repository model name, NAME or NAME:VERSION")
    check_model_options(args)
    state, update = _progress("gradients")
    if args.model:
        try:
            result = run_model_gradients(args, update)
        finally:
            _close(state)
        print_model_flow(result, args.every, args.json)
        return 0
    weights = _load_weights(args.weights)
    with SequenceClient(args.address, **client_kwargs(args)) as client:
        try:
            result = client.analyze_gradients(
                progress=False,
                cells=args.cells,
                spectral_radii=args.rho,
                hidden_size=0 if weights else args.hidden_size,
                sequence_length=args.sequence_length,
                input_size=args.input_size,
                input_distribution=args.inputs,
                input_scale=args.input_scale,
                weights=weights,
                init=args.init,
                init_scale=args.init_scale,
                forget_bias=args.forget_bias,
                regime_tolerance=args.regime_tolerance,
                random_initial_state=args.random_initial_state,
                seed=args.seed,
                dtype=args.dtype,
                plot=bool(args.plot),
                on_progress=update,
            )
        finally:
            _close(state)
    if args.json:
        print_json(result)
    else:
        _print_gradients(result, args.every)
    _save_plot(result.plot_png, args.plot)
    return 0


def _print_gradients(result, every: int) -> None:
    """The summary table (one row per cell and spectral radius), then each run's norms at about ten
    distances ``T-k`` (every ``every`` steps when given)."""
    print(
        f"gradient flow, T={result.sequence_length}, H={result.hidden_size}, D={result.input_size} "
        f"({result.seconds:.2f}s on the server)"
    )
    print_table(
        [
            (
                run.cell,
                run.target_spectral_radius or "given",
                run.spectral_radius,
                run.weight_norm,
                run.derivative_bound if run.derivative_bound is not None else "none",
                run.jacobian_norms[0],
                run.bounds[0] if run.bounds is not None else "none",
                run.growth_rate,
                run.regime,
            )
            for run in result.runs
        ],
        [
            "cell",
            "target rho",
            "rho(W_hh)",
            "gamma_W",
            "gamma_h",
            "|dh_T/dh_0|",
            "bound",
            "rate",
            "regime",
        ],
    )
    steps = result.sequence_length
    every = every or max(1, steps // 10)
    picks = [k for k in range(steps) if (steps - k) % every == 0 or k == steps - 1]
    for run in result.runs:
        label = f"{run.cell}" + (f" rho={run.target_spectral_radius:g}" if run.target_spectral_radius else "")
        print(f"\n{label}")
        print_table(
            [
                (
                    steps - k,
                    run.jacobian_norms[k],
                    run.bounds[k] if run.bounds is not None else "-",
                    run.input_gradient_norms[k],
                )
                for k in sorted(picks, key=lambda k: steps - k)
            ],
            ["T-k", "|dh_T/dh_k|", "bound", "|dL/dx_(k+1)|"],
        )


def run_truncation(args: argparse.Namespace) -> int:
    state, update = _progress("truncation")
    with SequenceClient(args.address, **client_kwargs(args)) as client:
        try:
            result = client.compare_truncation(
                progress=False,
                chunk_counts=args.chunk_counts,
                vocab_size=args.vocab_size,
                embed_size=args.embed_size,
                hidden_size=args.hidden_size,
                batch_size=args.batch_size,
                chunk_length=args.chunk_length,
                seed=args.seed,
                plot=bool(args.plot),
                on_progress=update,
            )
        finally:
            _close(state)
    if args.json:
        print_json(result)
    else:
        print(
            f"truncated vs full BPTT on {result.device}: {result.parameters:,} parameters, "
            f"B={args.batch_size}, L={args.chunk_length}"
        )
        truncated, full = result.series("truncated"), result.series("full")
        print_table(
            [
                (
                    a.chunk_count,
                    f"{a.saved_bytes / 2**20:.2f}",
                    f"{b.saved_bytes / 2**20:.2f}",
                    f"{b.saved_bytes / a.saved_bytes:.2f}" if a.saved_bytes else "-",
                    f"{a.seconds:.3f}",
                    f"{b.seconds:.3f}",
                    a.loss,
                )
                for a, b in zip(truncated, full, strict=True)
            ],
            ["K", "truncated MiB", "full MiB", "full/truncated", "truncated s", "full s", "loss"],
        )
        if any(p.peak_device_bytes for p in result.points):
            print("GPU peak MiB (truncated / full):")
            for a, b in zip(truncated, full, strict=True):
                print(
                    f"  K={a.chunk_count}: {a.peak_device_bytes / 2**20:.1f} / "
                    f"{b.peak_device_bytes / 2**20:.1f}"
                )
        print_fields(
            [
                ("slope truncated (bytes per chunk)", f"{result.truncated_slope_bytes:,.0f}"),
                ("slope full (bytes per chunk)", f"{result.full_slope_bytes:,.0f}"),
            ]
        )
    _save_plot(result.plot_png, args.plot)
    return 0
