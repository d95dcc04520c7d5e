"""The Open Inference Protocol on the vision server, driven by the real ``tritonclient[grpc]`` (in its own
environment): metadata, readiness, inference with each input form (raw and typed contents), the
classification extension, streaming, Triton's error conventions, auth, and metrics labelled by protocol.

Expected values come from elsewhere: the tiny CNN run by onnxruntime here, the seed notebook's labels for the
photos, and Classify's answers for the same photos."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch
from nnprobe import VisionClient
from PIL import Image

from tests.support import tiny_cnn

CONFIG = {
    "input": {"height": tiny_cnn.SIDE, "width": tiny_cnn.SIDE},
    "preprocessing": {"mean": [0.5, 0.25, 0.125], "std": [0.5, 0.5, 0.25]},
}
#: Top-1 of the default classifier for the seed photos (the original notebook's AlexNet labels).
SEED_TOP1 = {"snake": 58, "lizard": 42, "scorpion": 71, "lion": 291, "tiger": 292}


@pytest.fixture(scope="module")
def net():
    return tiny_cnn.network()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, net):
    path = tmp_path_factory.mktemp("oip") / "tiny.onnx"
    tiny_cnn.write(path, tiny_cnn.onnx_bytes(net))
    return path


@pytest.fixture(scope="module")
def served(module_server_factory, tmp_path_factory, onnx_file, free_port):
    """A vision server with two versions of the tiny model, a broken model and a metrics port."""
    repository = tmp_path_factory.mktemp("oip-repository")
    metrics = free_port()
    _, address = module_server_factory(
        "vision", weights_download_timeout=0, model_repository=repository, metrics_port=metrics
    )
    with VisionClient(address, timeout=120) as vision:
        vision.upload_model(onnx_file, name="tiny", config=CONFIG, labels=tiny_cnn.LABELS)
        vision.upload_model(onnx_file, name="tiny")  # version 2, same network
    broken = repository / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.yaml").write_text(tiny_cnn.CONFIG_YAML)
    (broken / "1" / "model.onnx").write_bytes(bytes(range(256)) * 4)
    return address, metrics


def expected_logits(onnx_file, pixels: np.ndarray) -> np.ndarray:
    """onnxruntime's logits for (N, 3, H, W) pixels in [0, 1] after the config's normalisation."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": tiny_cnn.normalised(torch.from_numpy(pixels)).numpy()})[0]


def uint8_images(seed: int, count: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, tiny_cnn.SIDE, tiny_cnn.SIDE, 3), np.uint8)


def png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_status_metadata_and_config(served, triton):
    address, _ = served
    seen = triton("status", address=address, wait=180, models=[["tiny", ""], ["tiny", "1"], ["nope", ""]])
    assert seen["live"] is True and seen["ready"] is True
    assert seen["server"]["name"] == "nnprobe" and "classification" in seen["server"]["extensions"]
    tiny = seen["models"]["tiny:"]
    side = str(tiny_cnn.SIDE)
    assert tiny["metadata"]["versions"] == ["1", "2"] and tiny["metadata"]["platform"] == "onnxruntime_onnx"
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in tiny["metadata"]["inputs"]}
    assert inputs == {
        "pixels": ("FP32", ["-1", "3", side, side]),
        "image": ("UINT8", ["-1", "-1", "-1", "3"]),
        "image_bytes": ("BYTES", ["-1", "1"]),
    }
    outputs = {t["name"]: t["shape"] for t in tiny["metadata"]["outputs"]}
    assert outputs == {
        "logits": ["-1", str(tiny_cnn.CLASSES)],
        "probabilities": ["-1", str(tiny_cnn.CLASSES)],
    }
    config = tiny["config"]
    assert config["max_batch_size"] == 256 and config["backend"] == "onnxruntime"
    assert all(i["optional"] for i in config["input"])
    assert [o["dims"] for o in config["output"]] == [[str(tiny_cnn.CLASSES)]] * 2
    assert "dynamic_batching" in config
    assert seen["models"]["nope:"]["error"] == {
        "status": "NOT_FOUND",
        "message": "Request for unknown model: 'nope' is not found",
    }


def test_a_model_that_fails_to_load_is_not_ready_and_says_why(served, triton):
    seen = triton("wait_model", address=served[0], model="broken", wait=5)
    assert seen["ready"] is False
    (row,) = [row for row in seen["index"] if row["name"] == "broken"]
    assert row["state"] == "UNAVAILABLE" and "broken" in row["reason"]
    ready = triton("wait_model", address=served[0], model="tiny", version="2", wait=60)
    assert ready["ready"] is True
    assert {"name": "tiny", "version": "2", "state": "READY"}.items() <= next(
        r for r in ready["index"] if r["name"] == "tiny" and r["version"] == "2"
    ).items()


def test_each_input_form_gives_onnxruntimes_logits(served, triton, onnx_file):
    address, _ = served
    images = uint8_images(1)
    pixels = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    expected = expected_logits(onnx_file, pixels)
    n, side = len(images), tiny_cnn.SIDE
    forms = {
        "pixels": {
            "name": "pixels",
            "datatype": "FP32",
            "shape": [n, 3, side, side],
            "data": pixels.tolist(),
        },
        "image": {"name": "image", "datatype": "UINT8", "shape": [n, side, side, 3], "data": images.tolist()},
        "image_bytes": {
            "name": "image_bytes",
            "datatype": "BYTES",
            "shape": [n, 1],
            "b64": [png(i) for i in images],
        },
    }
    for name, spec in forms.items():
        for scenario in ("infer", "infer_typed"):
            seen = triton(
                scenario, address=address, model="tiny", inputs=[spec], outputs=[{"name": "logits"}]
            )
            assert "error" not in seen, (name, scenario, seen)
            np.testing.assert_allclose(np.array(seen["outputs"]["logits"]), expected, atol=1e-5)
            assert seen["model_version"] == "2"


def test_classification_extension_and_probabilities(served, triton, onnx_file):
    images = uint8_images(2, 2)
    expected = expected_logits(onnx_file, images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    spec = {"name": "image", "datatype": "UINT8", "shape": list(images.shape), "data": images.tolist()}
    seen = triton(
        "infer",
        address=served[0],
        model="tiny",
        version="1",
        id="req-7",
        inputs=[spec],
        outputs=[{"name": "logits", "class_count": 3}, {"name": "probabilities"}],
    )
    assert seen["model_version"] == "1" and seen["id"] == "req-7"
    for row, strings, probs in zip(
        expected, seen["outputs"]["logits"], seen["outputs"]["probabilities"], strict=True
    ):
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:3]
        parsed = [s.split(":") for s in strings]
        assert [int(p[1]) for p in parsed] == order
        assert [p[2] for p in parsed] == [tiny_cnn.LABELS[i] for i in order]
        np.testing.assert_allclose([float(p[0]) for p in parsed], row[order], atol=1e-5)
        softmax = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        np.testing.assert_allclose(probs, softmax, atol=1e-6)


def test_seed_photos_top_k_equal_classify(served, triton, shared_dir):
    photos = sorted((shared_dir / "data" / "seed-images").glob("*.jpg"))
    encoded = [p.read_bytes() for p in photos]
    spec = {
        "name": "image_bytes",
        "datatype": "BYTES",
        "shape": [len(photos), 1],
        "b64": [base64.b64encode(e).decode() for e in encoded],
    }
    seen = triton(
        "infer",
        address=served[0],
        model="efficientnet_lite0",
        inputs=[spec],
        outputs=[{"name": "probabilities", "class_count": 5}],
    )
    with VisionClient(served[0], timeout=300) as vision:
        classified = vision.classify(encoded, top_k=5)
    for photo, strings, result in zip(photos, seen["outputs"]["probabilities"], classified, strict=True):
        parsed = [s.split(":", 2) for s in strings]
        assert [int(p[1]) for p in parsed] == [c.index for c in result.top]
        assert [p[2] for p in parsed] == [c.label for c in result.top]
        np.testing.assert_allclose(
            [float(p[0]) for p in parsed], [c.probability for c in result.top], atol=2e-6
        )
        assert int(parsed[0][1]) == SEED_TOP1[photo.stem.rsplit("_", 1)[-1]]


def test_errors_follow_tritons_conventions(served, triton):
    address, side = served[0], tiny_cnn.SIDE
    pixels = {
        "name": "pixels",
        "datatype": "FP32",
        "shape": [1, 3, side, side],
        "data": [0.5] * (3 * side * side),
    }
    cases = [
        (dict(model="nope", inputs=[pixels]), "NOT_FOUND", "Request for unknown model: 'nope' is not found"),
        (
            dict(model="tiny", version="9", inputs=[pixels]),
            "NOT_FOUND",
            "Request for unknown model: 'tiny' version 9 is not found",
        ),
        (
            dict(model="tiny", inputs=[dict(pixels, datatype="FP64")]),
            "INVALID_ARGUMENT",
            "inference input 'pixels' data-type is 'FP64', but model 'tiny' expects 'FP32'",
        ),
        (
            dict(model="tiny", inputs=[dict(pixels, shape=[1, 3, side * side, 1])]),
            "INVALID_ARGUMENT",
            f"unexpected shape for input 'pixels' for model 'tiny'. Expected [-1,3,{side},{side}], "
            f"got [1,3,{side * side},1]",
        ),
        (
            dict(model="tiny", inputs=[dict(pixels, name="x")]),
            "INVALID_ARGUMENT",
            "unexpected inference input 'x' for model 'tiny'",
        ),
        (
            dict(model="tiny", inputs=[pixels], outputs=[{"name": "scores"}]),
            "INVALID_ARGUMENT",
            "unexpected inference output 'scores' for model 'tiny'",
        ),
        (
            dict(model="tiny", inputs=[dict(pixels, data=[2.0] * (3 * side * side))]),
            "INVALID_ARGUMENT",
            "must lie in [0, 1]",
        ),
        (
            dict(model="broken", inputs=[pixels]),
            "UNAVAILABLE",
            "Request for unknown model: 'broken' has no available versions",
        ),
    ]
    for arguments, status, message in cases:
        seen = triton("infer", address=address, **arguments)
        assert seen["error"]["status"] == status, (arguments, seen)
        assert message in seen["error"]["message"], (message, seen)
    two = triton(
        "infer",
        address=address,
        model="tiny",
        inputs=[
            pixels,
            dict(
                pixels, name="image", datatype="UINT8", data=[1] * (3 * side * side), shape=[1, side, side, 3]
            ),
        ],
    )
    assert (
        two["error"]["status"] == "INVALID_ARGUMENT"
        and "expected 1 inputs but got 2" in two["error"]["message"]
    )
    short = triton(
        "infer_typed",
        address=address,
        model="tiny",
        inputs=[pixels],
        raw_bytes=base64.b64encode(b"\0" * 12).decode(),
    )
    assert short["error"]["status"] == "INVALID_ARGUMENT"
    assert (
        "input byte size mismatch for input 'pixels' for model 'tiny'. "
        f"Expected {3 * side * side * 4}, got 12" in short["error"]["message"]
    )
    both = triton("infer_typed", address=address, model="tiny", inputs=[pixels], raw_too=True)
    assert "contents field must not be specified when using raw_input_contents" in both["error"]["message"]
    extensions = triton("calls", address=address)
    assert extensions["statistics"]["error"]["status"] == "UNIMPLEMENTED"
    assert extensions["load"]["error"]["status"] == "UNIMPLEMENTED"
    assert extensions["system_shared_memory"]["answer"] == {}


def test_stream_answers_each_request_and_reports_errors_in_the_stream(served, triton, onnx_file):
    images = uint8_images(3, 1)
    expected = expected_logits(onnx_file, images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    spec = {"name": "image", "datatype": "UINT8", "shape": list(images.shape), "data": images.tolist()}
    seen = triton(
        "stream",
        address=served[0],
        requests=[
            {"model": "tiny", "inputs": [spec]},
            {"model": "nope", "inputs": [spec]},
            {"model": "tiny", "inputs": [spec]},
        ],
    )
    first, error, third = seen["received"]
    np.testing.assert_allclose(np.array(first["outputs"]["logits"]), expected, atol=1e-5)
    assert "Request for unknown model: 'nope' is not found" in error["error"]
    assert third["outputs"]["logits"] == first["outputs"]["logits"] and third["id"] == "2"


def test_metrics_are_labelled_by_protocol(served, triton, scrape):
    address, metrics = served
    triton("status", address=address, wait=60)
    text = scrape(metrics)
    infer = re.search(
        r'nnprobe_requests_total\{code="OK",method="/inference.GRPCInferenceService/ServerLive",'
        r'protocol="open_inference"\} (\S+)',
        text,
    )
    assert infer is not None and float(infer.group(1)) >= 1
    assert 'method="/nnprobe.vision.v1.VisionService/UploadModel",protocol="nnprobe"' in text


def test_tokens_guard_the_protocol_too(server_factory, triton):
    _, address = server_factory("vision", weights_download_timeout=0, auth_token="s3cret")
    side = 224
    spec = {
        "name": "pixels",
        "datatype": "FP32",
        "shape": [1, 3, side, side],
        "data": [0.5] * (3 * side * side),
    }
    refused = triton("infer", address=address, model="efficientnet_lite0", inputs=[spec])
    assert refused["error"]["status"] == "UNAUTHENTICATED"
    allowed = triton(
        "infer",
        address=address,
        model="efficientnet_lite0",
        inputs=[spec],
        headers={"authorization": "Bearer s3cret"},
        outputs=[{"name": "logits", "class_count": 1}],
    )
    assert "error" not in allowed and len(allowed["outputs"]["logits"]) == 1


def test_stream_errors_carry_the_requests_id(served, onnx_file):
    """Through a plain gRPC stub: a valid request "a" and a request "b" with an input the model does not
    have; "b"'s error comes back in the stream with infer_response.id == "b", "a"'s logits with id "a"."""
    import grpc
    from nnprobe.api.inference import grpc_service_pb2 as pb
    from nnprobe.api.inference import grpc_service_pb2_grpc as pb_grpc

    images = uint8_images(5, 1)
    expected = expected_logits(onnx_file, images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)

    def request(request_id: str, input_name: str) -> pb.ModelInferRequest:
        message = pb.ModelInferRequest(model_name="tiny", id=request_id)
        message.inputs.add(name=input_name, datatype="UINT8", shape=list(images.shape))
        message.raw_input_contents.append(images.tobytes())
        return message

    with grpc.insecure_channel(served[0]) as channel:
        stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([request("a", "image"), request("b", "no_such_input")]), timeout=120
        )
        answered, failed = list(stream)
    assert answered.error_message == "" and answered.infer_response.id == "a"
    logits = np.frombuffer(answered.infer_response.raw_output_contents[0], "<f4").reshape(expected.shape)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert "no_such_input" in failed.error_message
    assert failed.infer_response.id == "b" and failed.infer_response.model_name == "tiny"
