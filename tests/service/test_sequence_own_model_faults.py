"""AnalyzeGradients on uploaded models that misbehave, through the SDK against an in-process server: calls on
one model at once from many threads all load it and agree with a lone call; a cell exported in training mode
(dropout, batch norm) is refused at upload on ``file``; a cell that answers NaN is FAILED_PRECONDITION on
``model`` (never INTERNAL); a sequence model without recurrence is analysed (rate 0)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from nnprobe import NnprobeError, SequenceClient

from tests.support.recurrent_models import F64


class DroppedCell(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell, self.drop = torch.nn.RNNCell(3, 4), torch.nn.Dropout(0.5)

    def forward(self, x, h):
        return self.drop(self.cell(x, h))


class NormalisedCell(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell, self.norm = torch.nn.RNNCell(3, 4), torch.nn.BatchNorm1d(4)

    def forward(self, x, h):
        return self.norm(self.cell(x, h))


class LogCell(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(7, 4)

    def forward(self, x, h):
        return torch.log(self.linear(torch.cat([x, h], 1)))


def _archive(module, args, dynamic) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(module, args, dynamic_shapes=dynamic), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(module_server_factory, tmp_path_factory):
    repository, files = tmp_path_factory.mktemp("repository"), tmp_path_factory.mktemp("files")
    _, address = module_server_factory("sequence", sequence_model_repository=repository, compute_workers=2)
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=64)
    x, h = torch.zeros(2, 3, dtype=F64), torch.zeros(2, 4, dtype=F64)
    cell_shapes = ({0: batch}, {0: batch})
    archives = {
        "lstm": _archive(
            torch.nn.LSTMCell(3, 4).to(F64), (x, (h, h)), ({0: batch}, ({0: batch}, {0: batch}))
        ),
        "log": _archive(LogCell().to(F64), (x, h), cell_shapes),
        "positionwise": _archive(
            torch.nn.Linear(3, 4).to(F64), (torch.zeros(2, 5, 3, dtype=F64),), ({0: batch},)
        ),
    }
    cell = {"task": "recurrent_cell", "input_size": 3, "hidden_size": 4}
    configs = {
        "lstm": {**cell, "states": 2},
        "log": cell,
        "positionwise": {"task": "sequence_model", "input_size": 3, "hidden_size": 4, "sequence_length": 5},
    }
    with SequenceClient(address, timeout=120) as client:
        for name, data in archives.items():
            (files / f"{name}.pt2").write_bytes(data)
            client.upload_model(files / f"{name}.pt2", name=name, config=configs[name])
    return address


def test_concurrent_calls_on_one_model_all_load_it_and_agree_with_a_lone_call(served):
    def analyse(seed: int) -> np.ndarray:
        with SequenceClient(served, timeout=120) as client:
            flow = client.analyze_gradients(model="lstm", sequence_length=6, seed=seed, progress=None)
            return flow.model_flow.jacobian_norms

    alone = [analyse(seed) for seed in range(3)]
    for _ in range(2):  # two rounds: the compute threads load the archive at the same moment
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(analyse, [0, 1, 2, 0, 1, 2, 0, 1]))
        for seed, norms in zip([0, 1, 2, 0, 1, 2, 0, 1], together, strict=True):
            np.testing.assert_array_equal(norms, alone[seed])


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("log", "state after step 1 holds NaN or Inf"),
    ],
)
def test_a_misbehaving_cell_is_a_failed_precondition_on_model(served, name, words):
    with SequenceClient(served, timeout=60) as client, pytest.raises(NnprobeError) as refused:
        client.analyze_gradients(model=name, sequence_length=4, progress=None)
    assert refused.value.code.name == "FAILED_PRECONDITION"
    assert str(refused.value).startswith("FAILED_PRECONDITION: model: ")
    assert words in str(refused.value) and "Traceback" not in str(refused.value)


@pytest.mark.parametrize(("cell", "words"), [(DroppedCell, "dropout"), (NormalisedCell, "batch_norm")])
def test_a_cell_exported_in_training_mode_is_refused_at_upload_on_file(served, tmp_path, cell, words):
    batch = torch.export.Dim("batch", min=1, max=64)
    x, h = torch.ones(2, 3, dtype=F64), torch.zeros(2, 4, dtype=F64)
    path = tmp_path / "cell.pt2"
    path.write_bytes(_archive(cell().to(F64).train(), (x, h), ({0: batch}, {0: batch})))
    config = {"task": "recurrent_cell", "input_size": 3, "hidden_size": 4}
    with SequenceClient(served, timeout=60) as client, pytest.raises(NnprobeError) as refused:
        client.upload_model(path, name="trained-mode", config=config)
    assert refused.value.code.name == "INVALID_ARGUMENT"
    assert str(refused.value).startswith(f"INVALID_ARGUMENT: file: was exported in training mode ({words}")


def test_a_sequence_model_without_recurrence_is_analysed_with_rate_zero(served):
    torch.manual_seed(0)
    with SequenceClient(served, timeout=60) as client:
        flow = client.analyze_gradients(model="positionwise", progress=None).model_flow
    assert flow.growth_rate == 0.0 and flow.regime == "vanishing"
    assert flow.jacobian_norms[:-1].tolist() == [0.0] * 4 and flow.jacobian_norms[-1] > 0
