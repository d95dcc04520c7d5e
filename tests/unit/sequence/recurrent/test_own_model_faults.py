"""Faults of a user's own model met by the gradient analyses: a graph that answers NaN or Inf, a graph with
dropout left in training mode, a sequence model without recurrence (no earlier step reaches y_T) and a graph
exported in training mode (batch norm, dropout), each exported with torch.export and loaded back.
All but the model without recurrence are ``FailedPrecondition`` on ``model``; it, and a batch-norm cell in
eval mode, are analysed, their norms checked against torch.autograd on the original module."""

import functools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.sequence.recurrent import own_model_calls as calls
from nnprobe_services.sequence.recurrent import own_model_cells as cells
from nnprobe_services.sequence.recurrent import own_model_sequences as sequences

from tests.support.recurrent_models import F64, direct_cell_norms, direct_sequence_norms, exported

SLOW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def finish(generator):
    """The value an analysis generator returns."""
    while True:
        try:
            next(generator)
        except StopIteration as done:
            return done.value


class BlowsUp(torch.nn.Module):
    """Two states (h, c): h' = tanh(W h + U x), replaced by ``poison`` (NaN, Inf or -Inf) times h' once the
    counter c reaches 0; c' = c + 1. Started from c = 1 - a, the state blows up at step a (1-based)."""

    def __init__(self, inputs: int, hidden: int, poison: float) -> None:
        super().__init__()
        self.cell = torch.nn.RNNCell(inputs, hidden)
        self.poison = poison

    def forward(self, x, h, c):
        new = self.cell(x, h)
        factor = torch.where(c >= 0, torch.full_like(c, self.poison), torch.ones_like(c))
        return new * factor, c + 1


@functools.cache
def blowing_up(poison: float) -> torch.nn.Module:
    torch.manual_seed(0)
    module = BlowsUp(2, 3, poison).to(F64)
    zeros = (torch.zeros(1, 2, dtype=F64), torch.zeros(1, 3, dtype=F64), torch.zeros(1, 1, dtype=F64))
    return exported(module, zeros)


class DroppedCell(torch.nn.Module):
    """An RNN cell whose output passes through dropout."""

    def __init__(self, inputs: int, hidden: int, p: float) -> None:
        super().__init__()
        self.cell = torch.nn.RNNCell(inputs, hidden)
        self.drop = torch.nn.Dropout(p)

    def forward(self, x, h):
        return self.drop(self.cell(x, h))


@SLOW
@given(
    steps=st.integers(1, 6),
    at=st.integers(1, 8),
    poison=st.sampled_from([math.nan, math.inf, -math.inf]),
    seed=st.integers(0, 2**16),
)
def test_a_cell_whose_state_turns_non_finite_is_a_failed_precondition_naming_the_step(
    steps, at, poison, seed
):
    cell = cells.OwnCell(blowing_up(poison), 2, (3, 1))
    x = torch.randn(steps, 2, dtype=F64, generator=torch.Generator().manual_seed(seed))
    initial = (torch.zeros(3, dtype=F64), torch.full((1,), 1.0 - at, dtype=F64))
    run = cells.analyze_cell(cell, x, initial)
    # the analysis runs steps 1..T-1 forward (step 1 whatever T), then differentiates steps 1..T
    if at > steps:
        assert all(math.isfinite(v) for v in finish(run).log_hidden_norms)
        return
    with pytest.raises(FailedPrecondition) as refused:
        finish(run)
    where = "state after" if at < steps or at == 1 else "Jacobian at"
    assert refused.value.field == "model"
    assert f"{where} step {at} holds NaN or Inf" in str(refused.value)


@functools.cache
def dropped(p: float, train: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    module = DroppedCell(3, 8, p).to(F64).train(train)
    return exported(module, (torch.zeros(1, 3, dtype=F64), torch.zeros(1, 8, dtype=F64)))


@SLOW
@given(p=st.sampled_from([0.25, 0.5, 0.75]), steps=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_a_cell_exported_with_dropout_in_training_mode_is_a_failed_precondition(p, steps, seed):
    x = torch.randn(steps, 3, dtype=F64, generator=torch.Generator().manual_seed(seed)) + 3
    initial = (torch.full((8,), 0.5, dtype=F64),)
    with pytest.raises(FailedPrecondition) as refused:
        finish(cells.analyze_cell(cells.OwnCell(dropped(p, True), 3, (8,)), x, initial))
    assert refused.value.field == "model" and "model.eval()" in str(refused.value)
    # the same module exported in eval mode is analysed
    flow = finish(cells.analyze_cell(cells.OwnCell(dropped(p, False), 3, (8,)), x, initial))
    assert len(flow.hidden_norms) == steps


def test_a_sequence_model_with_dropout_in_training_mode_is_a_failed_precondition():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Dropout(0.5)).to(F64).train()
    loaded = exported(module, (torch.zeros(1, 4, 2, dtype=F64),))
    x = torch.randn(4, 2, dtype=F64) + 3
    with pytest.raises(FailedPrecondition) as refused:
        finish(sequences.analyze_inputs(loaded, x))
    assert refused.value.field == "model" and "model.eval()" in str(refused.value)


def test_a_sequence_model_answering_nan_is_a_failed_precondition():
    class Log(torch.nn.Module):
        def forward(self, x):
            return torch.log(x)

    loaded = exported(Log(), (torch.ones(1, 3, 2, dtype=F64),))
    with pytest.raises(FailedPrecondition) as refused:
        finish(sequences.analyze_inputs(loaded, -torch.ones(3, 2, dtype=F64)))
    assert refused.value.field == "model" and "NaN or Inf" in str(refused.value)


class Positionwise(torch.nn.Module):
    """tanh(W x_t) at each step: y_T depends on x_T only."""

    def __init__(self, inputs: int, width: int, vocabulary: int | None = None) -> None:
        super().__init__()
        self.embed = None if vocabulary is None else torch.nn.Embedding(vocabulary, inputs)
        self.linear = torch.nn.Linear(inputs, width)

    def forward(self, x):
        return torch.tanh(self.linear(x if self.embed is None else self.embed(x)))


@functools.cache
def positionwise(steps: int, inputs: int, width: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the eager module, its export) for x of shape (1, T, I)."""
    torch.manual_seed(steps * 100 + inputs * 10 + width)
    module = Positionwise(inputs, width).to(F64)
    return module, exported(module, (torch.zeros(1, steps, inputs, dtype=F64),))


@SLOW
@given(steps=st.integers(2, 4), inputs=st.integers(1, 3), width=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_a_sequence_model_without_recurrence_has_rate_zero_and_its_last_block_equals_autograd(
    steps, inputs, width, seed
):
    module, loaded = positionwise(steps, inputs, width)
    x = torch.randn(steps, inputs, dtype=F64, generator=torch.Generator().manual_seed(seed))
    flow = finish(sequences.analyze_inputs(loaded, x))
    blocks, grads, loss = direct_sequence_norms(module, x.reshape(1, steps, inputs))
    assert flow.growth_rate == 0.0 and flow.regime == "vanishing"
    assert flow.output_norms[:-1] == [0.0] * (steps - 1)
    assert flow.output_norms[-1] == pytest.approx(blocks[-1], rel=1e-10)
    assert flow.loss_gradient_norms == pytest.approx(grads, rel=1e-10, abs=1e-300)
    assert flow.loss == pytest.approx(loss, rel=1e-12)


def test_token_ids_into_a_model_without_recurrence_have_rate_zero():
    torch.manual_seed(0)
    module = Positionwise(3, 4, vocabulary=10).to(F64)
    loaded = exported(module, (torch.zeros(1, 5, dtype=torch.int64),))
    flow = finish(sequences.analyze_tokens(loaded, torch.tensor([1, 2, 3, 4, 5])))
    assert flow.growth_rate == 0.0 and flow.output_norms[:-1] == [0.0] * 4 and flow.output_norms[-1] > 0


class NormalisedCell(torch.nn.Module):
    """An RNN cell followed by a batch norm and a dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = torch.nn.RNNCell(3, 4)
        self.norm = torch.nn.BatchNorm1d(4)
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, x, h):
        return self.drop(self.norm(self.cell(x, h)))


@pytest.mark.parametrize(("train_norm", "train_drop"), [(True, False), (False, True), (True, True)])
def test_a_graph_exported_in_training_mode_is_a_failed_precondition_naming_the_call(train_norm, train_drop):
    module = NormalisedCell().to(F64).eval()
    module.norm.train(train_norm)
    module.drop.train(train_drop)
    loaded = exported(module, (torch.randn(2, 3, dtype=F64), torch.randn(2, 4, dtype=F64)))
    with pytest.raises(FailedPrecondition) as refused:
        calls.check_inference_graph(loaded)
    assert refused.value.field == "model" and "model.eval()" in str(refused.value)
    assert ("batch_norm" if train_norm else "dropout") in str(refused.value)


def test_a_graph_exported_in_eval_mode_passes_and_a_batch_norm_cell_is_analysed_as_autograd_says():
    torch.manual_seed(0)
    module = NormalisedCell().to(F64)
    module.norm.running_mean.normal_()
    module.norm.running_var.uniform_(0.5, 2.0)
    module.eval()
    loaded = exported(module, (torch.randn(1, 3, dtype=F64), torch.randn(1, 4, dtype=F64)))
    calls.check_inference_graph(loaded)
    x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    flow = finish(cells.analyze_cell(cells.OwnCell(loaded, 3, (4,)), x, (torch.zeros(4, dtype=F64),)))
    expected = direct_cell_norms(module, x, [torch.zeros(4, dtype=F64)])["h"]
    assert flow.hidden_norms == pytest.approx(expected, rel=1e-10)
