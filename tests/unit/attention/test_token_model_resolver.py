"""workflow.token_model_resolver over a real repository of token models: uploaded exports certified by name at
the configured shape, models of token ids certified by permuting the ids, unknown names refused."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from nnprobe_services.attention import workflow
from nnprobe_services.attention.certificates import noise
from nnprobe_services.attention.certificates.plans import ModelCheckSpec
from nnprobe_services.attention.plans import Limits
from nnprobe_services.errors import InvalidArgument, NotFound, never
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
    """Token ids -> an embedding -> an encoder layer, optionally with learned position embeddings."""

    def __init__(self, positions: bool):
        super().__init__()
        self.embedding = torch.nn.Embedding(10, D)
        self.positions = torch.nn.Embedding(T, D) if positions else None
        self.layer = torch.nn.TransformerEncoderLayer(D, 2, 2 * D, dropout=0.0, batch_first=True)

    def forward(self, ids):
        h = self.embedding(ids)
        if self.positions is not None:
            h = h + self.positions(torch.arange(ids.shape[1]))
        return self.layer(h)


@pytest.mark.parametrize("positions", [False, True])
def test_a_model_of_token_ids_permutes_the_ids(models, positions):
    torch.manual_seed(11)
    model = Embedded(positions).eval()
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (torch.zeros(B, T, dtype=torch.long),)), buffer)
    config = f"task: token_model\nd_model: {D}\nvocabulary: 10\nbatch_size: {B}\nsequence_length: {T}\n"
    upload(models, "ids", buffer.getvalue(), config)
    resolve = workflow.token_model_resolver(models)
    spec = ModelCheckSpec("ids", "equivariance", seed=5)
    result = workflow.model_certificate(spec, resolve, LIMITS, torch.device("cpu"), never)
    assert result.input_shape == [B, T] and result.permutations_checked == 24
    ids = noise.draw_input((B, T), 5, vocabulary=10)
    assert ids.dtype == torch.int64 and int(ids.min()) >= 0 and int(ids.max()) < 10
    errors = brute_force_errors(model.double(), ids, invariant=False, t=T)
    assert result.deviation_float64 == pytest.approx(max(errors.values()), rel=1e-9, abs=1e-14)
    if not positions:
        assert result.holds and result.ratio <= 3
        return
    assert not result.holds and result.breaking.name == "add" and result.breaking.shape == [B, T, D]
    with pytest.raises(InvalidArgument) as error:
        bad = ModelCheckSpec("ids", "equivariance", x=np.full((B, T), 10))
        workflow.model_certificate(bad, resolve, LIMITS, torch.device("cpu"), never)
    assert error.value.field == "x" and "vocabulary is [0, 10)" in error.value.message
