"""The upload probe (``repository.probing``): a model of the declared shapes passes; one returning other
shapes is refused with the shapes expected and got, for models built in the test whose shapes are known."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository import probing, tasks
from torch import nn

from tests.support import sequence_models


def config(**values) -> tasks.TaskConfig:
    return tasks.parse(values)


class NestedLSTM(nn.Module):
    """nn.LSTMCell called as exported: (x, (h, c)); with ``one_state`` it takes h only (c = h)."""

    def __init__(self, one_state: bool = False):
        super().__init__()
        self.cell = sequence_models.lstm_cell(3, 5)
        self.one_state = one_state

    def forward(self, x, h, c=None):
        return self.cell(x, (h, h if self.one_state else c))


def test_an_lstm_cell_passes_as_a_two_state_cell():
    probing.check(NestedLSTM(), config(task="recurrent_cell", input_size=3, hidden_size=5, states=2))


def test_an_lstm_cell_declared_with_one_state_is_refused_with_the_shapes():
    with pytest.raises(InvalidArgument) as raised:
        probing.check(NestedLSTM(one_state=True), config(task="recurrent_cell", input_size=3, hidden_size=5))
    assert raised.value.field == "metadata.config_yaml"
    assert raised.value.message.startswith("model returned (2, 5), (2, 5) for inputs (2, 3), (2, 5), but ")
    assert "a recurrent_cell with hidden_size 5 and states 1 must return h (B, 5)" in raised.value.message


def test_a_token_model_with_the_wrong_width_names_expected_and_got():
    model = nn.Linear(8, 7)  # (B, T, 8) -> (B, T, 7)
    with pytest.raises(InvalidArgument) as raised:
        probing.check(model, config(task="token_model", d_model=8))
    assert "model returned (2, 5, 7)" in raised.value.message
    assert (
        "a token_model with d_model 8 must return one tensor (B, T, 8) or pooled (B, 8)"
        in raised.value.message
    )


def test_a_pooled_token_model_passes_and_unpooled_is_refused():
    pooled = sequence_models.TokenMixer(8, pooled=True)
    probing.check(pooled, config(task="token_model", d_model=8, pooled=True))
    with pytest.raises(InvalidArgument, match=r"returned \(2, 8\)"):
        probing.check(pooled, config(task="token_model", d_model=8, sequence_length=5, pooled=False))


def test_a_model_failing_on_the_probe_shapes_says_which_shapes():
    with pytest.raises(InvalidArgument) as raised:
        probing.check(nn.Linear(4, 4), config(task="sequence_model", input_size=3, hidden_size=4))
    assert "(2, 5, 3)" in raised.value.message and "RuntimeError" in raised.value.message


def test_token_ids_feed_an_embedding():
    model = nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 6))
    inputs = probing.probe_inputs(config(task="token_model", d_model=6, vocabulary=11))
    assert inputs[0].dtype == torch.int64 and tuple(inputs[0].shape) == (2, 5)
    assert int(inputs[0].min()) >= 0 and int(inputs[0].max()) < 11
    probing.check(model, config(task="token_model", d_model=6, vocabulary=11))


@settings(max_examples=25, deadline=None)
@given(hidden=st.integers(1, 6), returned=st.integers(1, 6), states=st.integers(1, 2))
def test_a_cell_passes_exactly_when_it_returns_its_declared_states(hidden, returned, states):
    class Cell(nn.Module):
        def forward(self, x, *hs):
            return tuple(torch.zeros(x.shape[0], returned) for _ in hs)

    declared = config(task="recurrent_cell", input_size=2, hidden_size=hidden, states=states)
    if returned == hidden:
        probing.check(Cell(), declared)
    else:
        with pytest.raises(InvalidArgument, match=f"returned \\(2, {returned}\\)"):
            probing.check(Cell(), declared)


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        return self.linear(x), x


def test_a_token_model_returning_two_tensors_is_refused():
    with pytest.raises(InvalidArgument) as raised:
        probing.check(_TwoOutputs(), config(task="token_model", d_model=8))
    assert "model returned (2, 5, 8), (2, 5, 8)" in raised.value.message
    assert "must return one tensor" in raised.value.message


@pytest.mark.parametrize(
    ("layer", "operator"),
    [(nn.Dropout(0.5), "dropout"), (nn.BatchNorm1d(5), "batch_norm")],
    ids=["dropout", "batch_norm"],
)
@pytest.mark.parametrize("training", [True, False])
def test_a_graph_exported_in_training_mode_is_refused_on_file(layer, operator, training):
    module = nn.Sequential(nn.Linear(8, 8), layer).train(training)
    program = torch.export.export(module, (torch.randn(2, 5, 8),))
    graph = program.module()
    calls = [str(getattr(n.target, "__name__", n.target)) for n in graph.graph.nodes]
    if not training:
        probing.check(graph, config(task="token_model", d_model=8))  # eval mode passes
        return
    assert any(operator in call for call in calls)  # what the export recorded, read here independently
    with pytest.raises(InvalidArgument) as raised:
        probing.check(graph, config(task="token_model", d_model=8))
    assert raised.value.field == "file"
    assert "exported in training mode" in raised.value.message and "model.eval()" in raised.value.message
