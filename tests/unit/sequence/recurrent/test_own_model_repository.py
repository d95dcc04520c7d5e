"""Repository models for AnalyzeGradients: an uploaded cell resolved with its config's shapes and analysed
equal to torch.autograd on the original module; a fixed batch other than 1 refused naming ``model``."""

import hashlib

import numpy as np
import pytest
import torch
from nnprobe_services.errors import FailedPrecondition, NotFound
from nnprobe_services.repository.task_models import TaskModels
from nnprobe_services.sequence.recurrent import own_model_cells as cells
from nnprobe_services.sequence.recurrent.own_model_repository import resolver

from tests.support import sequence_models
from tests.support.recurrent_models import F64, direct_cell_norms, pt2_with_fixed_batch

CPU = torch.device("cpu")


def install(models, name, data, config_yaml):
    upload = models.begin_upload(
        name,
        fmt="pt2",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        config_yaml=config_yaml,
        version=None,
    )
    upload.write(data)
    return models.install(upload)


@pytest.fixture
def models(tmp_path):
    return TaskModels(
        tmp_path / "models",
        accepted=("recurrent_cell", "sequence_model"),
        max_model_bytes=1 << 24,
        max_model_nodes=10_000,
    )


def test_an_uploaded_lstm_cell_resolves_with_its_shapes_and_analyses_like_autograd(models):
    cell = sequence_models.lstm_cell(3, 5, seed=4)
    install(
        models,
        "lstm",
        sequence_models.cell_pt2(cell, 3, 5, states=2),
        "task: recurrent_cell\ninput_size: 3\nhidden_size: 5\nstates: 2\n",
    )
    resolved = resolver(models, CPU)("lstm", 0, F64)
    assert (resolved.task, resolved.version, resolved.input_size, resolved.state_sizes) == (
        "recurrent_cell",
        1,
        3,
        (5, 5),
    )
    assert all(not p.requires_grad for p in resolved.module.parameters())
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    initial = [torch.zeros(5, dtype=F64)] * 2
    analysis = cells.analyze_cell(cells.OwnCell(resolved.module, 3, (5, 5)), x, initial)
    while True:
        try:
            next(analysis)
        except StopIteration as done:
            run = done.value
            break
    want = direct_cell_norms(cell.to(F64), x, initial)  # the float32 original, widened like the upload
    np.testing.assert_allclose(run.hidden_norms, want["h"], rtol=1e-10, atol=0)
    np.testing.assert_allclose(run.cell_norms, want["c"], rtol=1e-10, atol=0)
    with pytest.raises(NotFound) as missing:
        resolver(models, CPU)("lstm", 2, F64)
    assert missing.value.field == "model_version"


def test_a_model_exported_for_a_batch_of_two_is_refused_naming_model(models):
    data = pt2_with_fixed_batch(sequence_models.gru_cell(3, 4), 2)
    install(models, "gru2", data, "task: recurrent_cell\ninput_size: 3\nhidden_size: 4\nbatch_size: 2\n")
    with pytest.raises(FailedPrecondition, match="batch_size 2") as error:
        resolver(models, CPU)("gru2", 0, F64)
    assert error.value.field == "model"
