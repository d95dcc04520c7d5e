"""AnalyzeGradients on a repository model as one plain call: the cell or sequence-model analysis
(``own_model_cells`` / ``own_model_sequences``) chosen by the model's task, its progress thinned to about 20
events, then one result. Arguments are the plain values ``own_model_convert`` reads from the request."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import torch

from nnprobe_services.errors import ShouldStop
from nnprobe_services.sequence.recurrent import gradients, own_model_cells, own_model_sequences

#: The repository tasks AnalyzeGradients analyses.
CELL_TASK = "recurrent_cell"
SEQUENCE_TASK = "sequence_model"
TASKS = (CELL_TASK, SEQUENCE_TASK)

Flow = own_model_cells.CellGradients | own_model_sequences.SequenceGradients


@dataclass
class ModelGradientRun:
    """One repository model and what to feed it: ``inputs`` (T, I) floats or ``tokens`` (T,) int64 (one of
    them; a cell fed token ids takes one id per step), and for a cell the widths of its states and their
    initial values (N_i,), all on the device."""

    name: str
    version: int
    task: str
    module: torch.nn.Module
    input_size: int
    state_sizes: tuple[int, ...]
    inputs: torch.Tensor | None
    tokens: torch.Tensor | None
    initial: tuple[torch.Tensor, ...]
    regime_tolerance: float
    max_elements: int

    @property
    def steps(self) -> int:
        """T."""
        source = self.inputs if self.inputs is not None else self.tokens
        assert source is not None
        return int(source.shape[0])


@dataclass
class ModelGradientResult:
    """The analysis of ``run`` and the wall seconds since the request."""

    run: ModelGradientRun
    flow: Flow
    seconds: float


def analyze_model_gradients(
    run: ModelGradientRun, started: float, should_stop: ShouldStop
) -> Iterator[gradients.Progress | ModelGradientResult]:
    """The analysis' progress (every ~5% and the last), then its result; ``seconds`` counts from
    ``started`` (a ``time.perf_counter()`` value)."""
    flow = yield from _thinned(_analysis(run, should_stop))
    yield ModelGradientResult(run, flow, time.perf_counter() - started)


def _analysis(run: ModelGradientRun, should_stop: ShouldStop) -> Generator[gradients.Progress, None, Flow]:
    tolerance = run.regime_tolerance
    if run.task == CELL_TASK:
        sequence = run.inputs if run.inputs is not None else run.tokens
        assert sequence is not None
        cell = own_model_cells.OwnCell(run.module, run.input_size, run.state_sizes)
        return own_model_cells.analyze_cell(
            cell, sequence, run.initial, regime_tolerance=tolerance, should_stop=should_stop
        )
    if run.tokens is not None:
        return own_model_sequences.analyze_tokens(
            run.module,
            run.tokens,
            regime_tolerance=tolerance,
            max_elements=run.max_elements,
            should_stop=should_stop,
        )
    assert run.inputs is not None
    return own_model_sequences.analyze_inputs(
        run.module,
        run.inputs,
        regime_tolerance=tolerance,
        max_elements=run.max_elements,
        should_stop=should_stop,
    )


def _thinned(
    events: Generator[gradients.Progress, None, Flow],
) -> Generator[gradients.Progress, None, Flow]:
    """``events`` with only every ~5% of the progress and the last event passed on; the return value."""
    while True:
        try:
            event = next(events)
        except StopIteration as finished:
            return finished.value  # type: ignore[no-any-return]
        every = max(1, event.total // 20)
        if event.done % every == 0 or event.done == event.total:
            yield event
