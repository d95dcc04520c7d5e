"""A user's own sequence model: |dy_T/dx_k|_2 and |dL/dx_k|_2 (L = sum(y_T)) against
torch.autograd.functional.jacobian and torch.autograd.grad on the original module; token ids through the
embedding's output; the refusals."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import Cancelled, FailedPrecondition, InvalidArgument, ResourceExhausted
from nnprobe_services.sequence.recurrent import own_model_sequences as sequences
from nnprobe_services.sequence.recurrent.own_model_calls import on_device

from tests.support.recurrent_models import F64, EmbeddedGRU, direct_sequence_norms, exported, fitted_rate

REL = 1e-10


def finish(generator):
    seen = []
    while True:
        try:
            seen.append(next(generator))
        except StopIteration as done:
            return seen, done.value


def recurrent(kind, inputs, hidden, seed=0):
    torch.manual_seed(seed)
    layer = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    return layer(inputs, hidden, batch_first=True).to(F64)


@pytest.mark.parametrize(("kind", "inputs", "hidden"), [("rnn", 3, 4), ("lstm", 2, 5), ("gru", 4, 3)])
def test_exported_sequence_model_norms_equal_direct_autograd(kind, inputs, hidden):
    module = recurrent(kind, inputs, hidden, seed=3)
    steps = 8
    loaded = exported(module, (torch.zeros(1, steps, inputs, dtype=F64),))
    x = torch.randn(steps, inputs, generator=torch.Generator().manual_seed(5), dtype=F64)
    events, run = finish(sequences.analyze_inputs(loaded, x))
    assert [(e.done, e.total) for e in events] == [(i, hidden) for i in range(1, hidden + 1)]
    blocks, loss_grads, loss = direct_sequence_norms(lambda v: module(v)[0], x.reshape(1, steps, inputs))
    assert run.distances == list(range(steps - 1, -1, -1))
    np.testing.assert_allclose(run.output_norms, blocks, rtol=REL, atol=0)
    np.testing.assert_allclose(run.loss_gradient_norms, loss_grads, rtol=REL, atol=0)
    assert run.loss == pytest.approx(loss, rel=REL)
    assert run.growth_rate == pytest.approx(fitted_rate(run.distances, blocks), rel=REL)
    assert (run.measured, run.output_size) == ("inputs", hidden)


def test_token_ids_are_differentiated_at_the_embedding_output():
    torch.manual_seed(7)
    module = EmbeddedGRU(11, 3, 4).to(F64)
    ids = torch.tensor([1, 5, 0, 10, 3, 3], dtype=torch.int64)
    loaded = exported(module, (ids.reshape(1, -1),))
    with torch.no_grad():
        embedded = module.embed(ids.reshape(1, -1))
    blocks, loss_grads, loss = direct_sequence_norms(lambda e: module.gru(e)[0], embedded)
    for model in (loaded, module):  # the graph's aten.embedding node, and an eager nn.Embedding
        _, run = finish(sequences.analyze_tokens(model, ids))
        np.testing.assert_allclose(run.output_norms, blocks, rtol=REL, atol=0)
        np.testing.assert_allclose(run.loss_gradient_norms, loss_grads, rtol=REL, atol=0)
        assert run.loss == pytest.approx(loss, rel=REL)
        assert run.measured == "embedding"


def test_token_ids_outside_the_table_name_token_ids():
    module = EmbeddedGRU(5, 2, 2).to(F64)
    loaded = exported(module, (torch.zeros(1, 3, dtype=torch.int64),))
    for ids in ([0, 5, 1], [0, -1, 2]):
        with pytest.raises(InvalidArgument, match=r"0\.\.4") as error:
            finish(sequences.analyze_tokens(loaded, torch.tensor(ids)))
        assert error.value.field == "token_ids"


def test_token_ids_for_a_model_without_an_embedding_are_a_failed_precondition():
    module = recurrent("gru", 2, 2)
    loaded = exported(module, (torch.zeros(1, 3, 2, dtype=F64),))
    for model in (loaded, module):
        with pytest.raises(FailedPrecondition, match="embedding") as error:
            finish(sequences.analyze_tokens(model, torch.tensor([0, 1, 1])))
        assert error.value.field == "model"


def test_a_model_exported_for_another_length_is_a_failed_precondition_on_model():
    module = recurrent("rnn", 2, 3)

    class Fixed(torch.nn.Module):  # a reshape that pins T = 4
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, x):
            return self.inner(x.reshape(1, 4, 2))[0]

    loaded = exported(Fixed(), (torch.zeros(1, 4, 2, dtype=F64),))
    with pytest.raises(FailedPrecondition) as error:
        finish(sequences.analyze_inputs(loaded, torch.zeros(5, 2, dtype=F64)))
    assert error.value.field == "model"


def test_a_model_that_does_not_return_a_sequence_is_refused():
    pooled = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 2)).to(F64)
    with pytest.raises(FailedPrecondition, match=r"\(1, T=3, H\)") as error:
        finish(sequences.analyze_inputs(pooled, torch.zeros(3, 2, dtype=F64)))
    assert error.value.field == "model"


def test_limits_and_the_stop_signal():
    with pytest.raises(InvalidArgument) as error:
        sequences.check_steps(1, "sequence_length")
    assert error.value.field == "sequence_length"
    with pytest.raises(ResourceExhausted) as exhausted:
        sequences.check_steps(sequences.MAX_STEPS + 1, "inputs")
    assert exhausted.value.field == "inputs"
    wide = torch.nn.Linear(1, sequences.MAX_OUTPUT_WIDTH + 1).to(F64)
    with pytest.raises(ResourceExhausted) as exhausted:
        finish(sequences.analyze_inputs(wide, torch.zeros(2, 1, dtype=F64)))
    assert exhausted.value.field == "model"
    small = recurrent("rnn", 2, 3)
    with pytest.raises(ResourceExhausted, match=r"H \* T \* I = 24") as exhausted:
        finish(sequences.analyze_inputs(small, torch.zeros(4, 2, dtype=F64), max_elements=23))
    assert exhausted.value.field == "model"
    module = recurrent("lstm", 2, 6)
    calls = iter(range(100))
    with pytest.raises(Cancelled) as stopped:
        finish(
            sequences.analyze_inputs(
                module, torch.ones(4, 2, dtype=F64), should_stop=lambda: next(calls) >= 3
            )
        )
    assert stopped.value.done == 3


def test_an_output_independent_of_early_steps_has_zero_blocks():
    """A causal convolution of width 2: y_T sees x_(T-1) and x_T only; a zero block is -inf in the log
    and the regime is vanishing."""
    conv = torch.nn.Conv1d(2, 3, 2).to(F64)

    class Causal(torch.nn.Module):
        def forward(self, x):
            padded = torch.nn.functional.pad(x.transpose(1, 2), (1, 0))
            return conv(padded).transpose(1, 2)

    _, run = finish(sequences.analyze_inputs(Causal(), torch.randn(5, 2, dtype=F64)))
    assert run.output_norms[:3] == [0.0, 0.0, 0.0] and all(v > 0 for v in run.output_norms[3:])
    w = conv.weight.detach()  # (3, 2, 2): y_T = W[:, :, 0] x_(T-1) + W[:, :, 1] x_T + b
    assert run.output_norms[3] == pytest.approx(float(np.linalg.norm(w[:, :, 0].numpy(), 2)), rel=1e-12)
    assert run.output_norms[4] == pytest.approx(float(np.linalg.norm(w[:, :, 1].numpy(), 2)), rel=1e-12)
    assert run.regime == "vanishing"


@settings(max_examples=10, deadline=None)
@given(
    kind=st.sampled_from(["rnn", "lstm", "gru"]),
    inputs=st.integers(1, 3),
    hidden=st.integers(1, 4),
    steps=st.integers(2, 6),
    seed=st.integers(0, 2**31),
)
def test_property_sequence_blocks_equal_direct_autograd(kind, inputs, hidden, steps, seed):
    module = recurrent(kind, inputs, hidden, seed=seed)
    x = torch.randn(steps, inputs, generator=torch.Generator().manual_seed(seed), dtype=F64)
    _, run = finish(sequences.analyze_inputs(module, x))
    blocks, loss_grads, _ = direct_sequence_norms(lambda v: module(v)[0], x.reshape(1, steps, inputs))
    np.testing.assert_allclose(run.output_norms, blocks, rtol=REL, atol=1e-300)
    np.testing.assert_allclose(run.loss_gradient_norms, loss_grads, rtol=REL, atol=1e-300)


def test_on_device_moves_the_devices_a_graph_names():
    """An exported nn.LSTM creates its initial state with aten.zeros(..., device=cpu); on another device
    those nodes name that device (checked on the meta device, which every machine has)."""
    loaded = exported(recurrent("lstm", 2, 3), (torch.zeros(1, 4, 2, dtype=F64),))
    named = [n for n in loaded.graph.nodes if "device" in n.kwargs]
    assert named and all(n.kwargs["device"] == torch.device("cpu") for n in named)
    meta = torch.device("meta")
    on_device(loaded, meta)
    assert all(n.kwargs["device"] == meta for n in named)
    assert all(p.device == meta for p in loaded.parameters())
    y = loaded(torch.zeros(1, 4, 2, dtype=F64, device=meta))
    assert y[0].device == meta and tuple(y[0].shape) == (1, 4, 3)


class _Shifted(torch.nn.Module):
    """y = x + c with c a plain tensor attribute (torch.export keeps it as one, not as a buffer)."""

    def __init__(self):
        super().__init__()
        self.c = torch.tensor([1.0, 2.0], dtype=F64)

    def forward(self, x):
        return x + self.c


def test_on_device_moves_tensor_constants_held_as_plain_attributes():
    loaded = exported(_Shifted(), (torch.zeros(1, 3, 2, dtype=F64),))
    meta = torch.device("meta")
    on_device(loaded, meta)
    held = [v for sub in loaded.modules() for v in vars(sub).values() if isinstance(v, torch.Tensor)]
    assert held and all(v.device == meta for v in held)
    assert loaded(torch.zeros(1, 3, 2, dtype=F64, device=meta)).device == meta
