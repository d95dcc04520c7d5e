"""Saving a job's TensorBoard files (``nnprobe.sequence.training_logs``): a server-supplied name is written
only as a base name inside the chosen folder; anything else is refused before a byte is written."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe.api.sequence.v1 import sequence_pb2 as pb
from nnprobe.errors import DataLoss
from nnprobe.sequence.training_logs import EVENT_FILE_PREFIX, training_logs

ATTACKS = [
    "../events.out.tfevents.1",
    "/tmp/events.out.tfevents.1",
    "events.out.tfevents.1/../../x",
    "events.out.tfevents.1\\..\\x",
    "events.out.tfevents.\0x",
    "..",
    "",
    "checkpoint.pt",
]


def response(*names: str) -> pb.GetTrainingLogsResponse:
    return pb.GetTrainingLogsResponse(
        files=[pb.TrainingLogFile(name=n, data=f"bytes of {i}".encode()) for i, n in enumerate(names)]
    )


@pytest.mark.parametrize("name", ATTACKS)
def test_unsafe_names_are_refused_and_nothing_is_written(tmp_path, name):
    with pytest.raises(DataLoss, match="base name"):
        training_logs(response(EVENT_FILE_PREFIX + "1.host.2.0", name), "job-1").save(tmp_path / "out")
    assert not (tmp_path / "out").exists() and sorted(os.listdir(tmp_path)) == []


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.text(min_size=0, max_size=30), min_size=1, max_size=3, unique=True))
def test_any_name_is_either_a_base_name_in_the_folder_or_refused(tmp_path_factory, names):
    root = tmp_path_factory.mktemp("save")
    names = [EVENT_FILE_PREFIX + n if i % 2 == 0 else n for i, n in enumerate(names)]
    try:
        saved = training_logs(response(*names), "job-1").save(root / "out")
    except (DataLoss, ValueError, OSError):  # ValueError/OSError: a name the file system itself refuses
        assert sorted(p.name for p in root.rglob("*") if p.is_file()) == []
        return
    for path, name in zip(saved.files, names, strict=True):
        assert path.parent == root / "out" and path.name == name and name.startswith(EVENT_FILE_PREFIX)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert files == sorted(saved.files)  # nothing outside the folder, no temporary left
    assert [p.read_bytes() for p in saved.files] == [f"bytes of {i}".encode() for i in range(len(names))]
