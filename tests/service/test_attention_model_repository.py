"""AttentionService's model repository through the SDK and the CLI against an in-process server: a pooled
token model exported as .pt2 is uploaded, listed and deleted; a model whose output width differs from its
d_model is refused with the shapes expected and got; a recurrent cell is not a token model."""

from __future__ import annotations

import json

import grpc
import pytest
import torch
from nnprobe import AttentionClient, NnprobeError
from nnprobe.cli import main
from torch import nn

from tests.support import sequence_models

TOKEN = {"task": "token_model", "d_model": 8}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    batch = torch.export.Dim("batch", min=1, max=64)
    x = (torch.randn(2, 5, 8),)
    torch.manual_seed(0)
    pooled = sequence_models.TokenMixer(8, pooled=True)
    (root / "pooled.pt2").write_bytes(sequence_models.pt2_bytes(pooled, x, ({0: batch},)))
    (root / "narrow.pt2").write_bytes(sequence_models.pt2_bytes(nn.Linear(8, 7), x, ({0: batch},)))
    return root


@pytest.fixture(scope="module")
def served(module_server_factory, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repository")
    _, address = module_server_factory("attention", attention_model_repository=repository)
    with AttentionClient(address, timeout=120) as client:
        yield client, repository, address


def test_a_pooled_token_model_is_uploaded_listed_and_deleted(served, files):
    client, repository, _ = served
    uploaded = client.upload_model(files / "pooled.pt2", name="mixer", config={**TOKEN, "pooled": True})
    assert uploaded.version == 1
    (listed,) = client.list_models()
    assert (listed.name, listed.task, listed.hidden_size, listed.pooled, listed.input_size) == (
        "mixer",
        "token_model",
        8,
        True,
        0,
    )
    assert "pooled: true" in listed.config_yaml
    assert (repository / "mixer" / "config.yaml").read_text() == listed.config_yaml
    assert client.delete_model("mixer") == [1]
    assert client.list_models() == []


def test_a_model_of_other_width_is_refused_with_the_shapes(served, files):
    client, repository, _ = served
    with pytest.raises(NnprobeError) as refused:
        client.upload_model(files / "narrow.pt2", name="narrow", config=TOKEN)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in refused.value.field_violations] == ["metadata.config_yaml"]
    assert (
        "model returned (2, 5, 7) for inputs (2, 5, 8), but a token_model with d_model 8 must return "
        "one tensor (B, T, 8) or pooled (B, 8)" in str(refused.value)
    )
    assert not (repository / "narrow").exists()
    with pytest.raises(NnprobeError) as cell:
        client.upload_model(
            files / "narrow.pt2", name="narrow", config={"task": "recurrent_cell", "hidden_size": 7}
        )
    assert [v.field for v in cell.value.field_violations] == ["metadata.config_yaml.task"]


def test_the_cli_uploads_lists_and_deletes(served, files, tmp_path, capsys):
    _, _, address = served
    config = tmp_path / "config.yaml"
    config.write_text("task: token_model\nd_model: 8\npooled: true\n")
    connection = ["--address", address]
    words = [
        "attention",
        "models",
        "upload",
        str(files / "pooled.pt2"),
        "--name",
        "cli",
        "--config",
        str(config),
    ]
    assert main([*words, *connection]) == 0
    assert "cli version 1 (token_model: (T, 8) -> (8))" in capsys.readouterr().out
    assert main(["attention", "models", "list", "--json", *connection]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["name"], listed["versions"][0]["format"]) == ("cli", "pt2")
    assert main(["attention", "models", "delete", "cli", *connection]) == 0
    assert "cli: removed version(s) 1" in capsys.readouterr().out
