"""Pictures of gradient flow and of truncated-BPTT memory, rendered to PNG bytes (matplotlib, Agg)."""

from __future__ import annotations

import io
import math

from matplotlib.figure import Figure

from nnprobe_services.sequence.recurrent.gradients import GradientRun
from nnprobe_services.sequence.recurrent.truncation import Comparison

LABELS = {
    "rnn_tanh": "tanh RNN",
    "rnn_relu": "ReLU RNN",
    "rnn_linear": "linear RNN",
    "lstm": "LSTM",
    "gru": "GRU",
}


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def gradient_flow(runs: list[GradientRun], sequence_length: int) -> bytes:
    """log10 |dh_T/dh_k| against T - k, one line per run, its bound dashed in the same colour."""
    figure = Figure(figsize=(7, 4.5))  # no pyplot: its global state is not thread-safe
    axes = figure.subplots()
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        label = LABELS[run.cell]
        if run.target_spectral_radius:
            label += f", ρ={run.target_spectral_radius:g}"
        if run.cell == "lstm" and run.forget_bias:
            label += f", forget bias {run.forget_bias:g}"
        log10 = [v / math.log(10) for v in run.log_jacobian_norms]
        axes.plot(run.distances, log10, color=color, label=f"{label} (rate {run.growth_rate:.3g}/step)")
        if run.bounds and run.derivative_bound and run.weight_norm > 0:
            gamma = run.weight_norm * run.derivative_bound
            bound = [d * math.log10(gamma) for d in run.distances]
            axes.plot(run.distances, bound, color=color, linestyle="--", linewidth=1)
    axes.set_xlabel("T − k (steps back)")
    axes.set_ylabel("log₁₀ ‖∂h_T/∂h_k‖₂")
    axes.set_title(f"Gradient flow through time (T = {sequence_length}); dashed: (γ_W γ_h)^(T−k)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def truncation_memory(comparison: Comparison) -> bytes:
    """Saved bytes for backward against K, truncated and full."""
    figure = Figure(figsize=(7, 4.5))  # no pyplot: its global state is not thread-safe
    axes = figure.subplots()
    for mode, label in (
        ("truncated", "truncated (detach between chunks)"),
        ("full", "full BPTT (no detach)"),
    ):
        points = [p for p in comparison.points if p.mode == mode]
        axes.plot(
            [p.chunk_count for p in points],
            [p.saved_bytes / 2**20 for p in points],
            marker="o",
            label=label,
        )
    axes.set_xlabel("K (consecutive chunks)")
    axes.set_ylabel("memory held for backward (MiB)")
    axes.set_title("Truncated BPTT: memory held for backward")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return _png(figure)
