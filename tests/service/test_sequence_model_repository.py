"""SequenceService's model repository through the SDK against an in-process server: an nn.LSTMCell exported
as .pt2 is uploaded, listed with its declared shapes and the file's sha256, and deleted; version numbers are
never reused; hostile uploads (a pickle, a path-traversal name, a model whose shapes differ from its config,
a token model) are refused naming the field and leave nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
import pickle

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe import NnprobeError, SequenceClient
from nnprobe.aio import SequenceClient as AsyncSequenceClient

from tests.support import sequence_models

CELL = {"task": "recurrent_cell", "input_size": 3, "hidden_size": 5, "states": 2}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    (root / "lstm.pt2").write_bytes(sequence_models.cell_pt2(sequence_models.lstm_cell(3, 5), 3, 5, states=2))
    gru = sequence_models.gru_cell(3, 5)
    (root / "gru.onnx").write_bytes(
        sequence_models.onnx_bytes(gru, (torch.randn(2, 3), torch.randn(2, 5)), ["x", "h"])
    )
    torch.save(gru, root / "pickled.pt2")
    (root / "raw.pt2").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    return root


@pytest.fixture(scope="module")
def served(module_server_factory, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repository")
    _, address = module_server_factory("sequence", sequence_model_repository=repository)
    with SequenceClient(address, timeout=120) as client:
        yield client, repository, address


def entries(repository):
    return sorted(p.name for p in repository.iterdir()), sorted(
        p.name for p in (repository / ".staging").iterdir()
    )


def test_an_lstm_cell_is_uploaded_listed_and_deleted(served, files):
    client, repository, _ = served
    uploaded = client.upload_model(files / "lstm.pt2", name="lstm", config=CELL, progress=False)
    assert (uploaded.version, uploaded.default_version_changed, uploaded.previous_default_version) == (
        1,
        True,
        0,
    )
    assert uploaded.sha256 == hashlib.sha256((files / "lstm.pt2").read_bytes()).hexdigest()
    (listed,) = [m for m in client.list_models() if m.name == "lstm"]
    assert (listed.task, listed.input_size, listed.hidden_size, listed.states) == ("recurrent_cell", 3, 5, 2)
    assert [(v.version, v.format, v.sha256) for v in listed.versions] == [(1, "pt2", uploaded.sha256)]
    assert (repository / "lstm" / "1" / "model.pt2").read_bytes() == (files / "lstm.pt2").read_bytes()
    assert "lstm" in repr(listed) and "<" in listed._repr_html_()
    assert client.delete_model("lstm") == [1]
    assert "lstm" not in [m.name for m in client.list_models()]


def test_versions_are_not_reused_after_delete(served, files):
    client, _, _ = served
    assert client.upload_model(files / "gru.onnx", name="gru", config={**CELL, "states": 1}).version == 1
    assert client.upload_model(files / "gru.onnx", name="gru").version == 2
    assert client.delete_model("gru", version=2) == [2]
    assert client.upload_model(files / "gru.onnx", name="gru").version == 3
    with pytest.raises(NnprobeError) as reused:
        client.upload_model(files / "gru.onnx", name="gru", version=2)
    assert reused.value.code == grpc.StatusCode.FAILED_PRECONDITION and "never reused" in str(reused.value)
    assert client.delete_model("gru") == [1, 3]
    assert client.upload_model(files / "gru.onnx", name="gru", config={**CELL, "states": 1}).version == 4
    client.delete_model("gru")


@pytest.mark.parametrize(
    ("file", "name", "config", "field", "words"),
    [
        ("pickled.pt2", "pickled", CELL, "file", "pickle"),
        ("raw.pt2", "raw", CELL, "file", "pickle"),
        ("lstm.pt2", "../x", CELL, "metadata.name", "not a model name"),
        (
            "lstm.pt2",
            "one-state",
            {**CELL, "states": 1},
            "metadata.config_yaml",
            "the model takes 3 tensors, got 2",
        ),
        ("lstm.pt2", "wide", {**CELL, "hidden_size": 6}, "metadata.config_yaml", "(2, 3), (2, 6), (2, 6)"),
        (
            "lstm.pt2",
            "tokens",
            {"task": "token_model", "d_model": 5},
            "metadata.config_yaml.task",
            "recurrent_cell",
        ),
        ("lstm.pt2", "fresh", None, "metadata.config_yaml", "needs its config"),
    ],
)
def test_hostile_uploads_are_refused_naming_the_field_and_leave_nothing(
    served, files, file, name, config, field, words
):
    client, repository, _ = served
    before = entries(repository)
    with pytest.raises(NnprobeError) as refused:
        client.upload_model(files / file, name=name, config=config, progress=False)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in refused.value.field_violations] == [field]
    assert words in str(refused.value)
    assert entries(repository) == before


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["..", "../x", "a/b", ".hidden", "-x", "x" * 65, "a\x00b", "ü", ""]))
def test_every_name_outside_the_pattern_is_refused(served, files, name):
    client, repository, _ = served
    before = entries(repository)
    with pytest.raises(NnprobeError) as refused:
        client.upload_model(files / "lstm.pt2", name=name, config=CELL, progress=False)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in refused.value.field_violations] == ["metadata.name"]
    assert entries(repository) == before


def test_the_asyncio_twins_upload_list_and_delete(served, files):
    _, _, address = served

    async def main():
        async with AsyncSequenceClient(address, timeout=120) as client:
            uploaded = await client.upload_model(
                files / "lstm.pt2", name="async-lstm", config=CELL, progress=False
            )
            listed = [m.name for m in await client.list_models()]
            return uploaded.version, listed, await client.delete_model("async-lstm", version=uploaded.version)

    assert asyncio.run(main()) == (1, ["async-lstm"], [1])
