"""Demo section: recurrent networks (the notebook's section 3) and truncated BPTT (question 2(a))."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nnprobe import SequenceClient
from nnprobe.cli.output import print_table, to_jsonable
from nnprobe.sequence import GradientAnalysis, RecurrentResult, TruncationComparison


def run(address: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with SequenceClient(address, timeout=600) as client:
        forward = _forward(client)
        sweep = _gradient_sweep(client, out_dir)
        cells = _gated_cells(client, out_dir)
        truncation = _truncation(client, out_dir)
    summary = {"forward": forward, "sweep": sweep, "cells": cells, "truncation": truncation}
    for value in summary.values():
        if hasattr(value, "plot_png"):
            value.plot_png = None
    (out_dir / "recurrent.json").write_text(json.dumps(to_jsonable(summary), indent=1))


def _forward(client: SequenceClient) -> RecurrentResult:
    print("3.B  Same input at every step, different outputs: the state moves until a fixed point")
    forward = client.run_recurrent(
        np.ones((25, 1, 3)), cell="rnn_tanh", hidden_size=3, seed=0, output_size=3, settle_tolerance=1e-9
    )
    assert forward.outputs is not None  # an output layer was asked for
    rows = [
        (t + 1, forward.step_changes[t, 0], np.array2string(forward.outputs[t, 0], precision=5))
        for t in (0, 1, 2, 3, 5, 10, 15, 20, 24)
    ]
    print_table(rows, ["t", "|h_t - h_(t-1)|", "y_t"])
    print(f"settled (changes <= 1e-9) from step {forward.settled_at[0]}\n")
    return forward


def _gradient_sweep(client: SequenceClient, out_dir: Path) -> GradientAnalysis:
    print("3.C  |dh_T/dh_k| = |prod of Jacobians| <= (gamma_W gamma_h)^(T-k): tanh and linear RNNs, T=60")
    sweep = client.analyze_gradients(
        cells=["rnn_tanh", "rnn_linear"],
        spectral_radii=[0.5, 1.0, 1.5],
        hidden_size=32,
        sequence_length=60,
        plot=True,
    )
    print_table(
        [
            (
                r.cell,
                r.target_spectral_radius,
                r.weight_norm,
                r.jacobian_norms[0],
                r.bounds[0] if r.bounds is not None else "none",  # RNN cells always have one
                r.growth_rate,
                r.regime,
            )
            for r in sweep.runs
        ],
        ["cell", "rho", "gamma_W", "|dh_T/dh_0|", "bound", "rate/step", "regime"],
    )
    (out_dir / "recurrent_gradients_sweep.png").write_bytes(sweep.plot_png or b"")
    return sweep


def _gated_cells(client: SequenceClient, out_dir: Path) -> GradientAnalysis:
    print("\n3.D  Gated cells keep gradients alive: H=32, T=50, rho=0.5")
    cells = client.analyze_gradients(
        cells=["rnn_tanh", "gru", "lstm"],
        spectral_radii=[0.5],
        hidden_size=32,
        sequence_length=50,
        forget_bias=1.0,
        plot=True,
    )
    print_table(
        [
            (r.cell, r.jacobian_norms[0], r.input_gradient_norms[0], r.growth_rate, r.regime)
            for r in cells.runs
        ],
        ["cell", "|dh_T/dh_0|", "|dL/dx_1|", "rate/step", "regime"],
    )
    (out_dir / "recurrent_gradients_cells.png").write_bytes(cells.plot_png or b"")
    return cells


def _truncation(client: SequenceClient, out_dir: Path) -> TruncationComparison:
    print("\n2(a)  detach() between chunks: memory held for backward (LM: embed 128, H 256, vocab 2000)")
    truncation = client.compare_truncation(
        vocab_size=2000,
        embed_size=128,
        hidden_size=256,
        batch_size=20,
        chunk_length=30,
        chunk_counts=[1, 2, 4, 8],
        plot=True,
    )
    print_table(
        [
            (
                a.chunk_count,
                f"{a.saved_bytes / 2**20:.2f}",
                f"{b.saved_bytes / 2**20:.2f}",
                f"{a.seconds:.3f}",
                f"{b.seconds:.3f}",
            )
            for a, b in zip(truncation.series("truncated"), truncation.series("full"), strict=True)
        ],
        ["K", "truncated MiB", "full MiB", "truncated s", "full s"],
    )
    print(
        f"slopes: truncated {truncation.truncated_slope_bytes:,.0f} B/chunk, "
        f"full {truncation.full_slope_bytes:,.0f} B/chunk: without detach() every chunk's saved "
        "activations stay alive until the one backward at the end."
    )
    (out_dir / "recurrent_truncation.png").write_bytes(truncation.plot_png or b"")
    return truncation
