"""The model repository through the SDK and the Open Inference Protocol against an in-process server:
version numbers are never reused (after deleting the highest version, the whole model), an upload says
when it changed the default version, two clients racing to create one model never mix configs, and a
model folder broken on disk is unavailable with its reason while every other model is served."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from nnprobe import NnprobeError, VisionClient
from nnprobe.api.inference import grpc_service_pb2 as oip_pb
from nnprobe.api.inference import grpc_service_pb2_grpc as oip_grpc
from nnprobe_services.vision.models import store

from tests.support import tiny_cnn

CONFIG = {
    "input": {"height": tiny_cnn.SIDE, "width": tiny_cnn.SIDE},
    "preprocessing": {"mean": [0.5, 0.25, 0.125], "std": [0.5, 0.5, 0.25]},
}
BGR = {**CONFIG, "input": {**CONFIG["input"], "channel_order": "bgr"}}


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    return tiny_cnn.write(
        tmp_path_factory.mktemp("net") / "tiny.onnx", tiny_cnn.onnx_bytes(tiny_cnn.network())
    )


@pytest.fixture
def served(server_factory, tmp_path):
    repository = tmp_path / "repository"
    _, address = server_factory(
        "vision", weights_download_timeout=0, model_repository=repository, compute_workers=2
    )
    return address, repository


def test_versions_are_never_reused_and_uploads_say_when_the_default_changes(served, onnx_file):
    address, _ = served
    with VisionClient(address, timeout=120) as vision:
        first = vision.upload_model(onnx_file, name="m", config=CONFIG, labels=tiny_cnn.LABELS)
        assert (first.version, first.default_version_changed, first.previous_default_version) == (1, True, 0)
        second = vision.upload_model(onnx_file, name="m")
        assert (second.version, second.default_version_changed, second.previous_default_version) == (
            2,
            True,
            1,
        )
        assert second.model.default_version == 2
        assert vision.delete_model("m", version=2) == [2]
        assert vision.upload_model(onnx_file, name="m").version == 3
        with pytest.raises(NnprobeError) as reused:
            vision.upload_model(onnx_file, name="m", version=2)
        assert reused.value.code == grpc.StatusCode.FAILED_PRECONDITION and "never reused" in str(
            reused.value
        )
        with pytest.raises(NnprobeError) as taken:
            vision.upload_model(onnx_file, name="m", version=3)
        assert taken.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert vision.delete_model("m") == [1, 3]
        again = vision.upload_model(onnx_file, name="m", config=BGR, labels=tiny_cnn.LABELS)
        assert (again.version, again.previous_default_version, again.default_version_changed) == (4, 0, True)
        pinned = {**CONFIG, "default_version": 1}
        vision.upload_model(onnx_file, name="p", config=pinned, labels=tiny_cnn.LABELS)
        kept = vision.upload_model(onnx_file, name="p")
        assert (kept.version, kept.default_version_changed, kept.previous_default_version) == (2, False, 1)


def test_two_clients_creating_one_model_with_other_configs(served, onnx_file, monkeypatch):
    address, _ = served
    barrier = threading.Barrier(2)
    validate = store.ModelStore.validate

    def both_checked(self, *args):
        validate(self, *args)
        barrier.wait(timeout=60)  # both uploads are checked before either is published

    monkeypatch.setattr(store.ModelStore, "validate", both_checked)
    outcomes: dict[str, object] = {}

    def upload(config_name: str, config: dict) -> None:
        with VisionClient(address, timeout=120) as vision:
            try:
                outcomes[config_name] = vision.upload_model(
                    onnx_file, name="m", config=config, labels=tiny_cnn.LABELS
                )
            except NnprobeError as error:
                outcomes[config_name] = error

    threads = [threading.Thread(target=upload, args=item) for item in (("rgb", CONFIG), ("bgr", BGR))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    errors = {k: v for k, v in outcomes.items() if isinstance(v, NnprobeError)}
    assert len(outcomes) == 2 and len(errors) == 1, outcomes
    (loser, error), (winner,) = next(iter(errors.items())), [k for k in outcomes if k not in errors]
    assert error.code == grpc.StatusCode.ALREADY_EXISTS and "exists with other config" in str(error)
    assert [v.field for v in error.field_violations] == ["metadata.config_yaml"]
    with VisionClient(address, timeout=60) as vision:
        (info,) = [m for m in vision.list_models() if m.name == "m"]
    assert [v.version for v in info.versions] == [1] and info.channel_order == winner != loser


def test_a_broken_folder_is_unavailable_and_the_others_are_served(served, onnx_file):
    address, repository = served
    with VisionClient(address, timeout=120) as vision:
        for name in ("good", "bad"):
            vision.upload_model(onnx_file, name=name, config=CONFIG, labels=tiny_cnn.LABELS)
        (repository / "bad" / "labels.txt").write_bytes(
            "\n".join(["café", *tiny_cnn.LABELS[1:]]).encode("latin-1")
        )
        listed = {m.name: m for m in vision.list_models()}
        assert (
            listed["bad"].state == "unavailable"
            and "bad/labels.txt is not UTF-8" in listed["bad"].state_message
        )
        assert listed["good"].state in ("available", "loaded") and listed["good"].num_labels == 5
        image = np.random.default_rng(0).random((tiny_cnn.SIDE, tiny_cnn.SIDE, 3), dtype=np.float32)
        with pytest.raises(NnprobeError) as refused:
            vision.classify([image], model="bad", skip_resize=True)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION and "labels.txt" in str(
            refused.value
        )
        assert vision.classify([image], model="good", skip_resize=True)[0].label in tiny_cnn.LABELS
        with grpc.insecure_channel(address) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            index = stub.RepositoryIndex(oip_pb.RepositoryIndexRequest(), timeout=30)
            rows = {(m.name, m.version): m for m in index.models}
            bad = [m for key, m in rows.items() if key[0] == "bad"]
            assert [m.state for m in bad] == ["UNAVAILABLE"] and "labels.txt" in bad[0].reason
            assert ("good", "1") in rows
            assert stub.ModelReady(oip_pb.ModelReadyRequest(name="bad"), timeout=30).ready is False
            with pytest.raises(grpc.RpcError) as metadata:
                stub.ModelMetadata(oip_pb.ModelMetadataRequest(name="bad"), timeout=30)
            assert metadata.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "labels.txt" in metadata.value.details()
            assert stub.ModelMetadata(oip_pb.ModelMetadataRequest(name="good"), timeout=30).name == "good"
        assert vision.delete_model("bad") == [1]
        assert [m.name for m in vision.list_models() if m.name in ("good", "bad")] == ["good"]
