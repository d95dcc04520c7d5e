"""The recurrent analyses as plain calls, one per RPC: a cell's forward pass (RunRecurrent), the gradient-flow
sweep with its picture (AnalyzeGradients) and the truncated-BPTT memory comparison with its picture
(CompareTruncation). Arguments are the plain values ``convert`` reads from the requests; the streamed
analyses yield the cores' ``Progress`` events, then one result. Each polls ``should_stop``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from nnprobe_services.errors import ShouldStop
from nnprobe_services.sequence.recurrent import gradients, plot, rnn, truncation


@dataclass
class RecurrentRun:
    """``rnn.run``'s arguments: the cell (weights on the device), inputs (T, B, D), the initial state and
    the tolerance below which a step's change counts as settled."""

    cell: rnn.Cell
    inputs: torch.Tensor
    initial: Any
    settle_tolerance: float


@dataclass
class GradientSweep:
    """``gradients.sweep``'s arguments plus the sizes the reply reports."""

    cells: list[rnn.Cell]
    targets: list[float]
    inputs: torch.Tensor
    initials: list[torch.Tensor]
    regime_tolerance: float
    forget_bias: float
    sequence_length: int
    hidden_size: int
    input_size: int


@dataclass
class GradientAnalysis:
    """Every run of a sweep, its picture (empty unless asked for) and the wall seconds since the request."""

    runs: list[gradients.GradientRun]
    plot_png: bytes
    seconds: float


@dataclass
class TruncationAnalysis:
    """The comparison of every K in both modes, and its picture (empty unless asked for)."""

    comparison: truncation.Comparison
    plot_png: bytes


def run_recurrent(run: RecurrentRun, should_stop: ShouldStop) -> rnn.Trajectory:
    """The cell's states over the inputs, step by step (``rnn.run``)."""
    return rnn.run(
        run.cell, run.inputs, run.initial, settle_tolerance=run.settle_tolerance, should_stop=should_stop
    )


def analyze_gradients(
    sweep: GradientSweep, draw: bool, started: float, should_stop: ShouldStop
) -> Iterator[gradients.Progress | GradientAnalysis]:
    """``gradients.sweep``'s progress, then its runs with their picture when ``draw``; ``seconds`` counts
    from ``started`` (a ``time.perf_counter()`` value)."""
    for event in gradients.sweep(
        sweep.cells,
        sweep.targets,
        sweep.inputs,
        sweep.initials,
        regime_tolerance=sweep.regime_tolerance,
        forget_bias=sweep.forget_bias,
        should_stop=should_stop,
    ):
        if isinstance(event, gradients.Progress):
            yield event
            continue
        picture = plot.gradient_flow(event.runs, sweep.sequence_length) if draw else b""
        yield GradientAnalysis(event.runs, picture, time.perf_counter() - started)


def compare_truncation(
    sizes: dict[str, Any], device: torch.device, draw: bool, should_stop: ShouldStop
) -> Iterator[truncation.Progress | TruncationAnalysis]:
    """``truncation.compare``'s progress for the model and run ``sizes``, then the comparison with its
    picture when ``draw``."""
    for event in truncation.compare(**sizes, device=device, should_stop=should_stop):
        if isinstance(event, truncation.Progress):
            yield event
            continue
        yield TruncationAnalysis(event, plot.truncation_memory(event) if draw else b"")
