"""workflow.token_model_resolver over a real repository of token models: uploaded exports certified by name,
the configured shape used, unknown names and token-id models refused naming the field."""

from __future__ import annotations

import hashlib
import io

import pytest
import torch
from nnprobe_services.attention import workflow
from nnprobe_services.attention.certificates.plans import ModelCheckSpec
from nnprobe_services.attention.plans import Limits
from nnprobe_services.errors import FailedPrecondition, NotFound, never
from nnprobe_services.repository.task_models import TaskModels

from tests.support.token_models import EncoderModel, brute_force_errors, export_bytes

B, T, D = 2, 4, 8
LIMITS = Limits(100_000, 1_000_000)


def upload(models: TaskModels, name: str, data: bytes, config_yaml: str) -> None:
    started = models.begin_upload(
        name,
        fmt="pt2",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        config_yaml=config_yaml,
        version=None,
    )
    started.write(data)
    models.install(started)


@pytest.fixture
def models(tmp_path) -> TaskModels:
    return TaskModels(
        tmp_path / "models", accepted=("token_model",), max_model_bytes=1 << 24, max_model_nodes=10_000
    )


def test_an_uploaded_encoder_is_certified_at_its_configured_shape(models):
    torch.manual_seed(6)
    shape_yaml = f"task: token_model\nd_model: {D}\nbatch_size: {B}\nsequence_length: {T}\n"
    upload(models, "encoder", export_bytes(EncoderModel(T, D), (B, T, D)), shape_yaml)
    upload(models, "encoder", export_bytes(EncoderModel(T, D, positions=True), (B, T, D)), shape_yaml)
    resolve = workflow.token_model_resolver(models)
    cpu = torch.device("cpu")
    first = workflow.model_certificate(
        ModelCheckSpec("encoder", "equivariance", 1), resolve, LIMITS, cpu, never
    )
    latest = workflow.model_certificate(
        ModelCheckSpec("encoder", "equivariance"), resolve, LIMITS, cpu, never
    )
    assert (first.model, first.model_version, first.input_shape, first.holds) == (
        "encoder",
        1,
        [B, T, D],
        True,
    )
    assert (latest.model_version, latest.holds, latest.breaking.name) == (2, False, "add")
    loaded = resolve("encoder", 2, torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64)
    errors = brute_force_errors(loaded.graph, x, invariant=False, t=T)
    assert max(errors.values()) > 1e-3 and loaded.input_shape == (B, T, D)


def test_an_unknown_model_is_not_found(models):
    with pytest.raises(NotFound) as error:
        workflow.token_model_resolver(models)("nobody", 0, torch.float64)
    assert error.value.field == "model"


class Embedded(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(10, D)

    def forward(self, ids):
        return self.embedding(ids).tanh()


def test_a_model_of_token_ids_is_a_failed_precondition(models):
    ids = torch.zeros(2, 5, dtype=torch.long)
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(Embedded(), (ids,)), buffer)
    upload(models, "ids", buffer.getvalue(), f"task: token_model\nd_model: {D}\nvocabulary: 10\n")
    with pytest.raises(FailedPrecondition) as error:
        workflow.token_model_resolver(models)("ids", 0, torch.float64)
    assert error.value.field == "model" and "token ids" in error.value.message
