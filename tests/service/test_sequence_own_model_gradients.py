"""AnalyzeGradients on the user's own recurrent models through the SDK against an in-process server: float64
models exported with torch.export are uploaded, analysed on drawn, given and token inputs, and every streamed
norm equals torch.autograd on the original module (the sequence unrolled and differentiated directly) to
1e-10; bad requests are refused naming the field."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json

import grpc
import numpy as np
import pytest
import torch
from nnprobe import NnprobeError, SequenceClient
from nnprobe.aio import SequenceClient as AsyncSequenceClient
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.api.sequence.v1 import sequence_pb2_grpc
from nnprobe.cli import main
from nnprobe.errors import field_violations

from tests.support import sequence_models
from tests.support.recurrent_models import (
    F64,
    EmbeddedGRU,
    archive,
    direct_cell_norms,
    direct_sequence_norms,
    pt2_with_fixed_batch,
)
from tests.support.waiting import wait_for_stops

REL = 1e-10
#: The initial state's generator offset from the seed, as docs/recurrent.md states it.
STATE_OFFSET = 0x2545F4914F6CDD1D


@pytest.fixture(scope="module")
def originals():
    torch.manual_seed(0)
    lstm = torch.nn.LSTMCell(3, 4).to(F64)
    gru = torch.nn.GRU(2, 3, batch_first=True).to(F64)
    tokens = EmbeddedGRU(12, 3, 4).to(F64)
    onnx = torch.nn.GRUCell(3, 4)  # float32: ONNX files are float32; the server widens the weights exactly
    return {"lstm": lstm, "gru": gru, "tokens": tokens, "onnx": onnx}


@pytest.fixture(scope="module")
def served(module_server_factory, tmp_path_factory, originals):
    repository = tmp_path_factory.mktemp("repository")
    files = tmp_path_factory.mktemp("files")
    _, address = module_server_factory("sequence", sequence_model_repository=repository)
    lstm, gru, tokens = originals["lstm"], originals["gru"], originals["tokens"]
    x, h = torch.zeros(2, 3, dtype=F64), torch.zeros(2, 4, dtype=F64)
    batch = torch.export.Dim("batch", min=1, max=64)
    (files / "lstm.pt2").write_bytes(
        _export(lstm, (x, (h, h.clone())), ({0: batch}, ({0: batch}, {0: batch})))
    )
    (files / "gru.pt2").write_bytes(_export(gru, (torch.zeros(2, 6, 2, dtype=F64),), ({0: batch},)))
    (files / "tokens.pt2").write_bytes(
        _export(tokens, (torch.zeros(2, 5, dtype=torch.int64),), ({0: batch},))
    )
    (files / "fixed.pt2").write_bytes(pt2_with_fixed_batch(torch.nn.GRUCell(3, 4), 2))
    onnx_cell = originals["onnx"]
    (files / "onnx.onnx").write_bytes(
        sequence_models.onnx_bytes(onnx_cell, (torch.randn(2, 3), torch.randn(2, 4)), ["x", "h"])
    )
    configs = {
        "lstm": {"task": "recurrent_cell", "input_size": 3, "hidden_size": 4, "states": 2},
        # torch.export specializes the length of nn.GRU: the configs declare it
        "gru": {"task": "sequence_model", "input_size": 2, "hidden_size": 3, "sequence_length": 6},
        "tokens": {"task": "sequence_model", "vocabulary": 12, "hidden_size": 4, "sequence_length": 5},
        "fixed": {"task": "recurrent_cell", "input_size": 3, "hidden_size": 4, "batch_size": 2},
        "onnx": {"task": "recurrent_cell", "input_size": 3, "hidden_size": 4},
    }
    with SequenceClient(address, timeout=120) as client:
        for name, config in configs.items():
            path = files / (f"{name}.onnx" if name == "onnx" else f"{name}.pt2")
            client.upload_model(path, name=name, config=config, progress=False)
        yield client, address, repository


def _export(module, args, shapes):
    program = torch.export.export(module, args, dynamic_shapes=shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def test_an_uploaded_lstm_cell_streams_the_autograd_norms(served, originals):
    client, _, _ = served
    events = []
    result = client.analyze_gradients(
        model="lstm",
        sequence_length=8,
        seed=3,
        random_initial_state=True,
        on_progress=events.append,
        progress=False,
    )
    flow = result.model_flow
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    states = torch.Generator().manual_seed(3 + STATE_OFFSET)
    initial = [torch.randn(4, generator=states, dtype=F64) for _ in range(2)]
    want = direct_cell_norms(originals["lstm"], x, initial)
    np.testing.assert_allclose(flow.jacobian_norms, want["h"], rtol=REL, atol=0)
    np.testing.assert_allclose(flow.cell_state_norms, want["c"], rtol=REL, atol=0)
    np.testing.assert_allclose(flow.step_norms, want["step"], rtol=REL, atol=0)
    assert (flow.model, flow.model_version, flow.task, flow.measured) == (
        "lstm",
        1,
        "recurrent_cell",
        "state",
    )
    assert flow.distances.tolist() == [8, 7, 6, 5, 4, 3, 2, 1] and flow.loss_gradient_norms is None
    assert flow.loss is None
    assert flow.regime in ("vanishing", "stable", "exploding") and flow.cell_regime is not None
    assert (result.sequence_length, result.hidden_size, result.input_size, result.runs) == (8, 4, 3, [])
    assert events and (events[-1].done, events[-1].total) == (8, 8)


def test_a_sequence_model_on_given_inputs_and_an_embedding_on_token_ids(served, originals):
    client, _, _ = served
    x = np.random.default_rng(1).standard_normal((6, 2))
    flow = client.analyze_gradients(model="gru", inputs=x, progress=False).model_flow
    gru = originals["gru"]
    blocks, grads, loss = direct_sequence_norms(lambda v: gru(v)[0], torch.from_numpy(x).reshape(1, 6, 2))
    np.testing.assert_allclose(flow.jacobian_norms, blocks, rtol=REL, atol=0)
    np.testing.assert_allclose(flow.loss_gradient_norms, grads, rtol=REL, atol=0)
    assert flow.loss == pytest.approx(loss, rel=REL) and flow.measured == "inputs"
    ids = [3, 11, 0, 7, 7]
    flow = client.analyze_gradients(model="tokens", token_ids=ids, progress=False).model_flow
    tokens = originals["tokens"]
    with torch.no_grad():
        embedded = tokens.embed(torch.tensor([ids]))
    blocks, grads, loss = direct_sequence_norms(lambda e: tokens.gru(e)[0], embedded)
    np.testing.assert_allclose(flow.jacobian_norms, blocks, rtol=REL, atol=0)
    np.testing.assert_allclose(flow.loss_gradient_norms, grads, rtol=REL, atol=0)
    assert flow.measured == "embedding" and flow.distances.tolist() == [4, 3, 2, 1, 0]


def test_an_onnx_cell_in_float64_and_float32(served, originals):
    """onnx2torch's graph of a GRUCell: float64 equals autograd on the original widened to float64; the
    float32 analysis agrees to float32 precision."""
    client, _, _ = served
    exact = client.analyze_gradients(model="onnx", sequence_length=6, seed=5, progress=False).model_flow
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    want = direct_cell_norms(originals["onnx"].to(F64), x, [torch.zeros(4, dtype=F64)])
    np.testing.assert_allclose(exact.jacobian_norms, want["h"], rtol=REL, atol=0)
    np.testing.assert_allclose(exact.step_norms, want["step"], rtol=REL, atol=0)
    served32 = client.analyze_gradients(
        model="onnx", sequence_length=6, seed=5, dtype="float32", progress=False
    ).model_flow
    np.testing.assert_allclose(served32.jacobian_norms, want["h"], rtol=1e-4, atol=0)
    assert served32.regime == exact.regime


def test_the_asyncio_client_and_the_cli_agree_with_the_sync_client(served):
    client, address, _ = served
    sync = client.analyze_gradients(model="lstm", sequence_length=5, seed=2, progress=False).model_flow

    async def analyse():
        async with AsyncSequenceClient(address, timeout=120) as aio:
            return (
                await aio.analyze_gradients(model="lstm", sequence_length=5, seed=2, progress=False)
            ).model_flow

    np.testing.assert_array_equal(asyncio.run(analyse()).jacobian_norms, sync.jacobian_norms)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(
            [
                "rnn",
                "gradients",
                "--model",
                "lstm:1",
                "-T",
                "5",
                "--seed",
                "2",
                "--address",
                address,
                "--json",
            ]
        )
    assert status == 0
    printed = json.loads(out.getvalue())["model_flow"]
    np.testing.assert_array_equal(printed["jacobian_norms"], sync.jacobian_norms)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert (
            main(["rnn", "gradients", "--model", "lstm", "-T", "5", "--seed", "2", "--address", address]) == 0
        )
    assert f"rate {sync.growth_rate:.6g} per step: {sync.regime}" in out.getvalue()


def _raw(address, **fields):
    """The status code and field violations of a raw AnalyzeGradients request (the SDK refuses some of
    these before sending)."""
    with grpc.insecure_channel(address) as channel:
        stub = sequence_pb2_grpc.SequenceServiceStub(channel)
        try:
            list(stub.AnalyzeGradients(pb.AnalyzeGradientsRequest(**fields), timeout=60))
        except grpc.RpcError as error:
            return error.code().name, [v.field for v in field_violations(error)]
    return "OK", []


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"model": "nothing", "sequence_length": 3}, "NOT_FOUND", "model"),
        ({"model": "lstm", "model_version": 9, "sequence_length": 3}, "NOT_FOUND", "model_version"),
        ({"model": "lstm", "sequence_length": 3, "cells": [pb.CELL_TYPE_LSTM]}, "INVALID_ARGUMENT", "cells"),
        (
            {"model": "lstm", "sequence_length": 3, "spectral_radii": [0.5]},
            "INVALID_ARGUMENT",
            "spectral_radii",
        ),
        ({"model": "lstm", "sequence_length": 3, "plot": True}, "INVALID_ARGUMENT", "plot"),
        ({"model": "lstm", "token_ids": [1, 2]}, "INVALID_ARGUMENT", "token_ids"),
        ({"model": "lstm"}, "INVALID_ARGUMENT", "sequence_length"),
        ({"model": "lstm", "sequence_length": 20_000}, "RESOURCE_EXHAUSTED", "sequence_length"),
        ({"model": "tokens", "token_ids": [1, 12]}, "INVALID_ARGUMENT", "token_ids"),
        ({"model": "gru", "sequence_length": 5}, "INVALID_ARGUMENT", "sequence_length"),
        ({"model": "fixed", "sequence_length": 3}, "FAILED_PRECONDITION", "model"),
    ],
)
def test_bad_requests_name_the_field(served, fields, code, field):
    _, address, _ = served
    assert _raw(address, **fields) == (code, [field])


def test_a_model_of_another_task_is_a_failed_precondition_on_model(served):
    """A token model placed in the sequence repository's folder by hand (an upload would refuse it)."""
    client, _, repository = served
    folder = repository / "mixer"
    (folder / "1").mkdir(parents=True)
    (folder / "config.yaml").write_text("task: token_model\nd_model: 4\n")
    (folder / "1" / "model.pt2").write_bytes(archive(torch.nn.Identity(), (torch.zeros(2, 3, 4),)))
    with pytest.raises(NnprobeError) as error:
        client.analyze_gradients(model="mixer", sequence_length=3, progress=False)
    assert error.value.code.name == "FAILED_PRECONDITION"
    assert [v.field for v in error.value.field_violations] == ["model"]


def test_a_deadline_stops_the_products_between_steps(served, stops):
    client, _, _ = served
    with pytest.raises(NnprobeError) as caught:
        client.analyze_gradients(model="lstm", sequence_length=10_000, timeout=0.5, progress=False)
    assert caught.value.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
    wait_for_stops(stops, r"Jacobians of 10000 left|forward step \d+ of 10000")  # the server's loop ended
    again = client.analyze_gradients(model="lstm", sequence_length=3, progress=False).model_flow
    assert len(again.jacobian_norms) == 3
