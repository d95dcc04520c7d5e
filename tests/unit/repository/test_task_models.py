"""A service's repository of recurrent and token models (``repository.task_models``): uploads probed and
installed, loaded back in float64 equal to the original module, versions never reused after deletes."""

from __future__ import annotations

import hashlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import FailedPrecondition, InvalidArgument, NotFound
from nnprobe_services.repository.task_models import TaskModels

from tests.support import sequence_models

CELL_YAML = "task: recurrent_cell\ninput_size: 3\nhidden_size: 5\nstates: 2\n"


def models(tmp_path) -> TaskModels:
    return TaskModels(
        tmp_path / "models",
        accepted=("recurrent_cell", "sequence_model"),
        max_model_bytes=1 << 24,
        max_model_nodes=10_000,
    )


def upload(repository: TaskModels, name: str, data: bytes, config_yaml: str = CELL_YAML):
    started = repository.begin_upload(
        name,
        fmt="pt2",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        config_yaml=config_yaml,
        version=None,
    )
    started.write(data)
    return repository.install(started)


def test_an_uploaded_lstm_cell_loads_back_equal_and_versions_are_never_reused(tmp_path):
    repository = models(tmp_path)
    cell = sequence_models.lstm_cell(3, 5, seed=7)
    data = sequence_models.cell_pt2(cell, 3, 5, states=2)
    first = upload(repository, "lstm", data)
    assert (first.version, first.previous_default, first.default_version) == (1, 0, 1)
    assert first.model.versions[0].sha256 == hashlib.sha256(data).hexdigest()
    assert first.model.config is not None and first.model.config.state_sizes == (5, 5)
    loaded = repository.load("lstm", None, torch.float64)
    x, h, c = (torch.randn(2, n, dtype=torch.float64) for n in (3, 5, 5))
    got = loaded.module(x, (h, c))
    want = cell.double()(x, (h, c))
    assert all(torch.allclose(g, w, rtol=0, atol=1e-12) for g, w in zip(got, want, strict=True))
    assert repository.delete("lstm", None) == [1]
    assert repository.models() == []
    assert upload(repository, "lstm", data).version == 2


def test_a_mismatched_config_is_refused_and_leaves_nothing(tmp_path):
    repository = models(tmp_path)
    data = sequence_models.cell_pt2(sequence_models.gru_cell(3, 5), 3, 5, states=1)
    with pytest.raises(InvalidArgument) as raised:
        upload(repository, "gru", data, "task: recurrent_cell\ninput_size: 3\nhidden_size: 6\n")
    assert raised.value.field == "metadata.config_yaml"
    assert "taking (2, 3), (2, 6)" in raised.value.message  # what the config declares
    assert "hx.size()[1] == 5" in raised.value.message  # what the exported program checks
    assert "the archive was exported for (any, 3), (any, 5)" in raised.value.message  # read from the graph
    assert repository.models() == []
    assert list((tmp_path / "models" / ".staging").iterdir()) == []
    with pytest.raises(NotFound):
        repository.load("gru", None, torch.float64)


def test_a_token_model_is_not_accepted_by_a_sequence_repository(tmp_path):
    with pytest.raises(InvalidArgument) as raised:
        upload(models(tmp_path), "mixer", b"x", "task: token_model\nd_model: 8\n")
    assert raised.value.field == "metadata.config_yaml.task"


CELL_BYTES = sequence_models.cell_pt2(sequence_models.gru_cell(3, 5), 3, 5, states=1)
GRU_YAML = "task: recurrent_cell\ninput_size: 3\nhidden_size: 5\n"


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    operations=st.lists(st.sampled_from(["upload", "delete-version", "delete-model"]), min_size=1, max_size=6)
)
def test_a_version_number_is_never_given_twice(tmp_path_factory, operations):
    repository = models(tmp_path_factory.mktemp("repository"))
    given_out: list[int] = []
    for operation in operations:
        present = [v.version for m in repository.models() for v in m.versions]
        if operation == "upload":
            version = upload(repository, "gru", CELL_BYTES, GRU_YAML).version
            assert version not in given_out and version > max(given_out, default=0)
            given_out.append(version)
        elif present and operation == "delete-version":
            assert repository.delete("gru", present[-1]) == [present[-1]]
        elif present:
            assert repository.delete("gru", None) == present
    remaining = [v.version for m in repository.models() for v in m.versions]
    assert set(remaining) <= set(given_out)


def test_a_broken_folder_is_listed_with_its_problem_and_can_be_deleted(tmp_path):
    repository = models(tmp_path)
    upload(repository, "gru", CELL_BYTES, GRU_YAML)
    (tmp_path / "models" / "gru" / "config.yaml").write_text("task: token_model\nd_model: 8\n")
    (listed,) = repository.models()
    assert (listed.name, listed.config, listed.versions) == ("gru", None, ())
    assert "recurrent_cell, sequence_model" in listed.problem and "gru/config.yaml" in listed.problem
    with pytest.raises(FailedPrecondition):
        repository.load("gru", None, torch.float64)
    assert repository.delete("gru", None) == [1]
    assert upload(repository, "gru", CELL_BYTES, GRU_YAML).version == 2
