"""One broken model folder breaks only that model: a tiny CNN uploaded twice (``good``, ``bad``), then
``bad``'s folder corrupted on disk (Latin-1 labels, YAML that does not parse, a config that is not one, a
missing model file, a version folder that is a file, labels that are a folder, random bytes). ``bad`` is
FAILED_PRECONDITION naming the file, listed as unavailable with that reason, UNAVAILABLE in the Open
Inference index and not ready; ``good`` is listed, indexed and served as before; ``bad`` can be deleted."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.vision.models import convert, repository, store
from nnprobe_services.vision.open_inference import protocol as oip

from tests.support import tiny_cnn


def _latin1_labels(folder):
    (folder / "labels.txt").write_bytes("\n".join(["café", "bee", "cat", "dog", "eel"]).encode("latin-1"))


def _bad_yaml(folder):
    (folder / "config.yaml").write_text("input: {height: [16\n")


def _not_a_config(folder):
    (folder / "config.yaml").write_text("input: {height: 16}\ncolour: blue\n")


def _no_model_file(folder):
    (folder / "1" / "model.onnx").unlink()


def _version_folder_is_a_file(folder):
    shutil.rmtree(folder / "1")
    (folder / "1").write_bytes(b"not a folder")


def _labels_are_a_folder(folder):
    (folder / "labels.txt").unlink()
    (folder / "labels.txt").mkdir()


#: corruption -> what the reason names
CORRUPTIONS = {
    "latin-1 labels": (_latin1_labels, "bad/labels.txt is not UTF-8"),
    "bad yaml": (_bad_yaml, "bad/config.yaml"),
    "not a config": (_not_a_config, "bad/config.yaml"),
    "no model file": (_no_model_file, "no version folder with a model file"),
    "version folder is a file": (_version_folder_is_a_file, "no version folder with a model file"),
    "labels are a folder": (_labels_are_a_folder, "bad/labels.txt cannot be read"),
}


@pytest.fixture(scope="module")
def onnx_model():
    return tiny_cnn.onnx_bytes(tiny_cnn.network())


def install(repo, models, name, data):
    pending = repo.begin_upload(
        name,
        fmt="onnx",
        size=len(data),
        sha256=tiny_cnn.sha256(data),
        config_yaml=tiny_cnn.CONFIG_YAML,
        labels="\n".join(tiny_cnn.LABELS),
    )
    pending.write(data)
    return repo.install(pending, models.validate)


def two_models(root, data):
    repo = repository.ModelRepository(root, max_model_bytes=1 << 20)
    models = store.ModelStore(torch.device("cpu"), repository=repo)
    install(repo, models, "good", data)
    install(repo, models, "bad", data)
    return repo, models


def check_only_bad_is_broken(repo, models, reason: str) -> None:
    assert repo.names() == ["bad", "good"]
    with pytest.raises(FailedPrecondition) as broken:
        repo.get("bad")
    assert reason in broken.value.message and broken.value.field == "model"
    with pytest.raises(FailedPrecondition) as served:
        models.get("bad")
    assert reason in served.value.message
    listed = {info.name: info for info in convert.list_models(models, "good").models}
    assert listed["bad"].state == pb.MODEL_STATE_UNAVAILABLE and reason in listed["bad"].state_message
    assert listed["good"].state == pb.MODEL_STATE_AVAILABLE
    assert [v.version for v in listed["good"].versions] == [1] and listed["good"].num_labels == 5
    core = oip.OpenInference(models, None, max_batch_size=4, default_model="good")  # type: ignore[arg-type]
    try:
        index = {(name, version): (state, why) for name, version, state, why in core.index()}
        assert index[("good", "1")] == (oip.UNAVAILABLE, "not loaded yet")
        (bad_row,) = [row for key, row in index.items() if key[0] == "bad"]
        assert bad_row[0] == oip.UNAVAILABLE and reason in bad_row[1]
        name, version = core.resolve("bad", "")
        with pytest.raises(oip.ProtocolUnavailable) as metadata:
            core.signature(name, version)
        assert reason in metadata.value.message
        with pytest.raises(oip.ProtocolUnavailable) as infer:
            core.load(name, version)
        assert "has no available versions" in infer.value.message and reason in infer.value.message
        assert core.signature(*core.resolve("good", "")).classes == 5
    finally:
        core.close()
    assert models.get("good").predict(torch.zeros(1, 3, 16, 16)).shape == (1, tiny_cnn.CLASSES)


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_broken_folder_is_unavailable_with_its_reason_and_others_are_unaffected(tmp_path, onnx_model, case):
    repo, models = two_models(tmp_path, onnx_model)
    corrupt, reason = CORRUPTIONS[case]
    corrupt(repo.root / "bad")
    check_only_bad_is_broken(repo, models, reason)
    # An upload to the broken model says what is wrong; deleting it works and leaves the other model.
    with pytest.raises(FailedPrecondition) as upload:
        install(repo, models, "bad", onnx_model)
    assert reason in upload.value.message
    assert repo.delete("bad") == [1]
    assert repo.names() == ["good"] and not (repo.root / "bad").exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["config.yaml", "labels.txt"]), data=st.binary(max_size=200))
def test_any_bytes_in_a_folder_file_are_an_answer_never_an_internal_error(
    tmp_path_factory, onnx_model, which, data
):
    root = tmp_path_factory.mktemp("any-bytes")
    repo, models = two_models(root, onnx_model)
    (root / "bad" / which).write_bytes(data)
    try:
        entry = repo.get("bad")
    except FailedPrecondition as error:
        assert which in error.message or "labels" in error.message
        listed = {info.name: info for info in convert.list_models(models, "good").models}
        assert listed["bad"].state == pb.MODEL_STATE_UNAVAILABLE and listed["bad"].state_message
        assert listed["good"].state == pb.MODEL_STATE_AVAILABLE
    else:
        assert [v.version for v in entry.versions] == [1]
