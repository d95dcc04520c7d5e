"""AnalyzeGradients with a repository model, from request to reply: the drawn inputs follow the documented
recipe, the streamed result equals torch.autograd on the original module, and every bad field is named."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe import tensors
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe_services.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
)
from nnprobe_services.sequence.recurrent import own_model_convert as convert
from nnprobe_services.sequence.recurrent import own_model_workflow as workflow

from tests.support.recurrent_models import (
    F64,
    EmbeddedGRU,
    direct_cell_norms,
    direct_sequence_norms,
    exported,
)

CPU = torch.device("cpu")
LIMIT = 1_000_000


def models():
    torch.manual_seed(0)
    lstm = torch.nn.LSTMCell(3, 4).to(F64)
    gru = torch.nn.GRU(2, 3, batch_first=True).to(F64)
    tokens = EmbeddedGRU(9, 2, 3).to(F64)
    return {
        "lstm": (lstm, convert.ResolvedModel("lstm", 2, "recurrent_cell", lstm, 3, (4, 4))),
        "gru": (gru, convert.ResolvedModel("gru", 1, "sequence_model", gru, 2)),
        "tokens": (tokens, convert.ResolvedModel("tokens", 1, "sequence_model", tokens, 0, vocabulary=9)),
        "mixer": (None, convert.ResolvedModel("mixer", 1, "token_model", torch.nn.Identity(), 4)),
    }


MODELS = models()


def resolve(name, version, dtype):
    if name not in MODELS:
        raise NotFound(f"no model {name!r}", field="model")
    assert dtype == F64
    return MODELS[name][1]


def read(**fields):
    return convert.read_model_gradients(pb.AnalyzeGradientsRequest(**fields), resolve, CPU, LIMIT)


def run_all(run):
    events = list(workflow.analyze_model_gradients(run, 0.0, lambda: False))
    reply = convert.model_gradients_reply(events[-1])
    return [convert.model_gradients_reply(e) for e in events[:-1]], reply.result


def test_a_cell_on_drawn_inputs_from_request_to_reply():
    run = read(model="lstm", sequence_length=6, seed=11, random_initial_state=True)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(11), dtype=F64)
    assert torch.equal(run.inputs, x)
    progress, result = run_all(run)
    assert [p.progress.done for p in progress] == [1, 2, 3, 4, 5, 6]
    flow = result.model_flow
    want = direct_cell_norms(MODELS["lstm"][0], x, list(run.initial))
    np.testing.assert_allclose(flow.jacobian_norms, want["h"], rtol=1e-10, atol=0)
    np.testing.assert_allclose(flow.cell_state_norms, want["c"], rtol=1e-10, atol=0)
    np.testing.assert_allclose(flow.step_norms, want["step"], rtol=1e-10, atol=0)
    assert (flow.model, flow.model_version, flow.task) == ("lstm", 2, "recurrent_cell")
    assert flow.measured == pb.MEASURED_GRADIENT_STATE and list(flow.distances) == [6, 5, 4, 3, 2, 1]
    assert flow.regime != pb.REGIME_UNSPECIFIED and flow.cell_regime != pb.REGIME_UNSPECIFIED
    assert (result.sequence_length, result.hidden_size, result.input_size) == (6, 4, 3)
    assert not result.runs and result.regime_tolerance == 0.01


def test_a_sequence_model_on_given_inputs_and_on_token_ids():
    x = np.random.default_rng(3).standard_normal((5, 2))
    _, result = run_all(read(model="gru", inputs=tensors.to_tensor(x), regime_tolerance=0.2))
    gru = MODELS["gru"][0]
    blocks, grads, loss = direct_sequence_norms(lambda v: gru(v)[0], torch.from_numpy(x).reshape(1, 5, 2))
    flow = result.model_flow
    np.testing.assert_allclose(flow.jacobian_norms, blocks, rtol=1e-10, atol=0)
    np.testing.assert_allclose(flow.loss_gradient_norms, grads, rtol=1e-10, atol=0)
    assert flow.loss == pytest.approx(loss, rel=1e-10) and flow.measured == pb.MEASURED_GRADIENT_INPUTS
    assert not flow.step_norms and not flow.cell_state_norms and result.regime_tolerance == 0.2
    _, result = run_all(read(model="tokens", token_ids=[1, 8, 0, 4]))
    assert (
        result.model_flow.measured == pb.MEASURED_GRADIENT_EMBEDDING and len(result.model_flow.distances) == 4
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cells": [pb.CELL_TYPE_LSTM]}, "cells"),
        ({"spectral_radii": [0.9]}, "spectral_radii"),
        ({"hidden_size": 4}, "hidden_size"),
        ({"input_size": 3}, "input_size"),
        ({"init_scale": 1.0}, "init_scale"),
        ({"input_scale": 0.0}, "input_scale"),
        ({"plot": True}, "plot"),
        ({"input_distribution": pb.INPUT_DISTRIBUTION_UNIFORM}, "input_distribution"),
        ({"model_version": -1}, "model_version"),
        ({"dtype": common_pb2.DTYPE_INT64}, "dtype"),
        ({}, "sequence_length"),
        ({"sequence_length": 7, "inputs": tensors.to_tensor(np.zeros((6, 3)))}, "sequence_length"),
        ({"inputs": tensors.to_tensor(np.zeros((6, 2)))}, "inputs"),
        ({"inputs": tensors.to_tensor(np.full((2, 3), np.inf))}, "inputs"),
        ({"inputs": tensors.to_tensor(np.zeros((2, 3), np.int64))}, "inputs"),
        ({"token_ids": [1, 2]}, "token_ids"),
    ],
)
def test_bad_cell_requests_name_the_field(fields, field):
    with pytest.raises(InvalidArgument) as error:
        read(model="lstm", **fields)
    assert error.value.field == field


def test_sequence_model_refusals_name_the_field():
    both = {"inputs": tensors.to_tensor(np.zeros((3, 2))), "token_ids": [1, 2, 3]}
    cases: list[tuple[dict, type[ServiceError], str]] = [
        ({"sequence_length": 4, "random_initial_state": True}, InvalidArgument, "random_initial_state"),
        ({"sequence_length": 1}, InvalidArgument, "sequence_length"),
        (both, InvalidArgument, "token_ids"),
        ({"sequence_length": 10_001}, ResourceExhausted, "sequence_length"),
    ]
    for fields, kind, field in cases:
        with pytest.raises(kind) as error:
            read(model="gru", **fields)
        assert error.value.field == field, fields


def test_unknown_models_other_tasks_and_budgets():
    with pytest.raises(NotFound) as missing:
        read(model="nothing", sequence_length=3)
    assert missing.value.field == "model"
    with pytest.raises(FailedPrecondition, match="token_model") as task:
        read(model="mixer", sequence_length=3)
    assert task.value.field == "model"
    with pytest.raises(ResourceExhausted, match=r"T \* S\^2") as budget:
        convert.read_model_gradients(
            pb.AnalyzeGradientsRequest(model="lstm", sequence_length=20), resolve, CPU, 1279
        )
    assert budget.value.field == "sequence_length"


def test_an_exported_cell_runs_through_the_workflow():
    torch.manual_seed(2)
    module = torch.nn.GRUCell(2, 3).to(F64)
    loaded = exported(module, (torch.zeros(1, 2, dtype=F64), torch.zeros(1, 3, dtype=F64)))
    model = convert.ResolvedModel("g", 1, "recurrent_cell", loaded, 2, (3,))
    run = convert.read_model_gradients(
        pb.AnalyzeGradientsRequest(model="g", sequence_length=45), lambda *_: model, CPU, LIMIT
    )
    progress, result = run_all(run)
    assert [p.progress.done for p in progress] == [*range(2, 46, 2), 45]  # every 45 // 20 = 2
    assert run.inputs is not None
    want = direct_cell_norms(module, run.inputs, [torch.zeros(3, dtype=F64)])
    np.testing.assert_allclose(result.model_flow.jacobian_norms, want["h"], rtol=1e-10, atol=0)


class _TokenCell(torch.nn.Module):
    """A cell fed one token id per step: h' = tanh(E[id] + W h), ids (B,)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(6, 3)
        self.w = torch.nn.Linear(3, 3)

    def forward(self, ids, h):
        return torch.tanh(self.embed(ids) + self.w(h))


def test_token_models_draw_and_check_their_ids():
    torch.manual_seed(5)
    cell = _TokenCell().to(F64)
    model = convert.ResolvedModel("tc", 1, "recurrent_cell", cell, 0, (3,), vocabulary=6)
    run = convert.read_model_gradients(
        pb.AnalyzeGradientsRequest(model="tc", sequence_length=7, seed=9), lambda *_: model, CPU, LIMIT
    )
    ids = torch.randint(6, (7,), generator=torch.Generator().manual_seed(9))
    assert run.inputs is None and run.tokens is not None and torch.equal(run.tokens, ids)
    _, result = run_all(run)
    h = [torch.zeros(3, dtype=F64)]
    with torch.no_grad():
        for t in range(7):
            h.append(cell(ids[t : t + 1], h[-1].reshape(1, 3)).reshape(3))
    for k in range(7):  # |dh_T/dh_k| directly: the unrolled map h_k -> h_T

        def unroll(v, k=k):
            for t in range(k, 7):
                v = cell(ids[t : t + 1], v.reshape(1, 3)).reshape(3)
            return v

        want = np.linalg.norm(torch.autograd.functional.jacobian(unroll, h[k]).numpy(), 2)
        assert result.model_flow.jacobian_norms[k] == pytest.approx(want, rel=1e-10)
    for fields, field in (
        ({"token_ids": [0, 6]}, "token_ids"),
        ({"inputs": tensors.to_tensor(np.zeros((2, 1)))}, "inputs"),
    ):
        with pytest.raises(InvalidArgument) as error:
            convert.read_model_gradients(
                pb.AnalyzeGradientsRequest(model="tc", **fields), lambda *_: model, CPU, LIMIT
            )
        assert error.value.field == field
    with pytest.raises(InvalidArgument, match="float inputs") as error:
        read(model="gru", token_ids=[1, 2])
    assert error.value.field == "token_ids"


def test_a_model_exported_for_one_length_takes_that_length():
    gru = MODELS["gru"][0]
    model = convert.ResolvedModel("fixed", 1, "sequence_model", gru, 2, sequence_length=4)
    fixed = convert.read_model_gradients(
        pb.AnalyzeGradientsRequest(model="fixed"), lambda *_: model, CPU, LIMIT
    )
    assert fixed.inputs is not None and tuple(fixed.inputs.shape) == (4, 2)
    for fields, field in (
        ({"sequence_length": 5}, "sequence_length"),
        ({"inputs": tensors.to_tensor(np.zeros((3, 2)))}, "inputs"),
    ):
        with pytest.raises(InvalidArgument, match="exported for T = 4") as error:
            convert.read_model_gradients(
                pb.AnalyzeGradientsRequest(model="fixed", **fields), lambda *_: model, CPU, LIMIT
            )
        assert error.value.field == field


@settings(max_examples=30, deadline=None)
@given(
    steps=st.integers(1, 6),
    width=st.integers(1, 6).filter(lambda w: w != 3),
    ids=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=6).filter(
        lambda v: min(v) < 0 or max(v) >= 9
    ),
)
def test_property_inputs_of_another_width_and_ids_outside_the_vocabulary_are_named(steps, width, ids):
    with pytest.raises(InvalidArgument, match=r"\(T, 3\)") as wrong:
        read(model="lstm", inputs=tensors.to_tensor(np.zeros((steps, width))))
    assert wrong.value.field == "inputs"
    with pytest.raises(InvalidArgument, match=r"0\.\.8") as outside:
        read(model="tokens", token_ids=ids)
    assert outside.value.field == "token_ids"
