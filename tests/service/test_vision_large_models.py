"""Models larger than a message, through the SDK and the command line: an ONNX model goes as its graph
without its weights' values (the default) and is answered exactly as the full model is; sent whole over a
small limit it is refused, before sending or by the server, with what to do and never gRPC's own words;
the effective field of a weightless graph is refused as needing the values. Named models take constructor
options, checked against the model's signature."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from nnprobe import NnprobeError, VisionClient
from nnprobe.cli import main
from onnx import TensorProto, helper, numpy_helper

#: The server's (and the small client's) message limit in these tests.
LIMIT = 64 * 1024
SIDE = 40


def _large_model() -> bytes:
    """Three convolutions (3 -> 64 -> 64 -> 32 channels; 3x3 stride 2, 3x3 dilation 2, 5x5) whose
    weights (about 230 kB) are far over ``LIMIT``, with a pad and a nearest upsampling between them."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(size=(64, 3, 3, 3)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.normal(size=(64, 64, 3, 3)).astype(np.float32), "W2"),
        numpy_helper.from_array(rng.normal(size=(32, 64, 5, 5)).astype(np.float32), "W3"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["a"], kernel_shape=[3, 3], strides=[2, 2], name="conv1"),
        helper.make_node("Relu", ["a"], ["b"], name="relu1"),
        helper.make_node("Conv", ["b", "W2"], ["c"], kernel_shape=[3, 3], dilations=[2, 2], name="conv2"),
        helper.make_node("Pad", ["c", "pads"], ["d"], name="pad"),
        helper.make_node("Resize", ["d", "", "scales"], ["e"], mode="nearest", name="up"),
        helper.make_node("Conv", ["e", "W3"], ["y"], kernel_shape=[5, 5], strides=[2, 2], name="conv3"),
    ]
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIDE, SIDE])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [image], [output], initializer=weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


LARGE = _large_model()
UNITS = [("conv3", 0, 0), ("conv3", 3, 5), ("conv2", 7, 2)]


@pytest.fixture(scope="module")
def small_server(module_server_factory) -> str:
    """A vision server whose message limit is ``LIMIT`` bytes."""
    return module_server_factory("vision", weights_download_timeout=0, max_message_bytes=LIMIT)[1]


@pytest.fixture
def small(small_server):
    with VisionClient(small_server, timeout=120) as client:
        yield client


def _rows(result) -> list[tuple]:
    return [
        (
            f.name,
            f.height.size,
            f.height.jump,
            f.height.receptive_size,
            f.height.start,
            f.width.receptive_size,
        )
        for f in result.layers
    ]


def _units(result) -> list[tuple]:
    return [(u.layer, u.x, u.y, u.rows, u.columns, u.verification.matches) for u in result.units]


def test_the_model_is_over_the_limit_and_its_graph_far_under_it():
    from nnprobe.vision import onnx_graph

    light, withheld = onnx_graph.weightless(LARGE)
    assert len(LARGE) > 3 * LIMIT and len(light) < LIMIT // 20 and withheld == 3


def test_a_weightless_upload_answers_as_the_full_model(small, vision):
    weightless = small.compute_receptive_field(onnx=LARGE, units=UNITS, verify=True)
    full = vision.compute_receptive_field(onnx=LARGE, units=UNITS, verify=True, send_weights=True)
    assert _rows(weightless) == _rows(full) and _units(weightless) == _units(full)
    assert weightless.verified and full.verified
    end = weightless.layer("conv3")
    # jumps 2, 2, 1 (upsampled), 2; receptive 3, 3 + 2*2*2 = 11, 11 (pad), ceil over the upsampling ...
    assert (end.height.jump, end.height.size) == (2, (((SIDE - 3) // 2 + 1 - 4 + 2) * 2 - 5) // 2 + 1)


def test_the_full_model_over_the_servers_limit_says_what_to_do(small_server):
    # The client's own limit is the default 64 MiB: the server refuses.
    with VisionClient(small_server, timeout=60) as client, pytest.raises(NnprobeError) as caught:
        client.compute_receptive_field(onnx=LARGE, send_weights=True)
    error = caught.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" not in error.message and str(LIMIT) in error.message
    assert "send_weights=False" in error.message and "model repository" in error.message
    assert "raise the limit on both sides" in error.message


def test_the_full_model_over_the_clients_limit_is_refused_before_sending(vision_server):
    with VisionClient(vision_server, max_message_bytes=LIMIT) as client:
        with pytest.raises(NnprobeError) as caught:
            client.compute_receptive_field(onnx=LARGE, send_weights=True)
        assert client.compute_receptive_field(onnx=LARGE).end_point == "conv3"  # weightless fits
    error = caught.value
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message.startswith("the request is ") and f"limit of {LIMIT} bytes" in error.message
    assert "send_weights=False" in error.message and "--max-message-bytes" in error.message


def test_the_effective_field_of_a_weightless_graph_is_refused_as_needing_the_values(small):
    with pytest.raises(NnprobeError) as caught:
        small.compute_receptive_field(onnx=LARGE, effective_field=True, send_weights=False)
    error = caught.value
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert [v.field for v in error.field_violations] == ["effective_field"]
    assert "W1" in error.message and "send the full model" in error.message
    assert "model repository" in error.message


def test_the_command_line_sends_the_graph_and_explains_a_refusal(small_server, tmp_path, capsys):
    path = tmp_path / "large.onnx"
    path.write_bytes(LARGE)
    common = ["rf", "--address", small_server, "--onnx", str(path)]
    assert main([*common, "--unit", "conv3:3,5", "--verify", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["end_point"] == "conv3" and answer["units"][0]["verification"]["matches"]
    assert main([*common, "--send-weights"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: RESOURCE_EXHAUSTED") and "larger than max" not in err
    assert "send_weights=False" in err and "raise the limit on both sides" in err
    assert main([*common, "--send-weights", "--max-message-bytes", "1000"]) == 1
    assert "over the message limit of 1000 bytes" in capsys.readouterr().err


# -- named models with options ---------------------------------------------------------------------------
def test_a_dilated_resnet_by_option_has_jump_8(vision, capsys):
    result = vision.compute_receptive_field(
        model="timm/resnet18", input_size=64, model_options={"output_stride": 8}
    )
    plain = vision.compute_receptive_field(model="timm/resnet18", input_size=64)
    end, plain_end = result.layer(result.end_point), plain.layer(plain.end_point)
    assert (end.height.jump, end.height.size, result.model_final_stride) == (8, 8, 8)
    assert (plain_end.height.jump, plain_end.height.size) == (32, 2)  # the cache keeps them apart
    args = ["rf", "--address", vision.address, "--model", "timm/resnet18", "--input-size", "64", "--json"]
    assert main([*args, "--model-option", "output_stride=8"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model_final_stride"] == 8


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        (
            {"outptu_stride": 8},
            "model.options[outptu_stride]",
            ['no option "outptu_stride"', "output_stride"],
        ),
        ({"output_stride": "eight"}, "model.options[output_stride]", ["must be an integer", "not a text"]),
        ({"features_only": 1}, "model.options[features_only]", ["must be true or false"]),
    ],
)
def test_options_are_checked_against_the_models_signature(vision, options, field, words):
    with pytest.raises(NnprobeError) as caught:
        vision.compute_receptive_field(model="timm/resnet18", input_size=64, model_options=options)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == [field]
    assert all(word in error.message for word in words), error.message
    assert "b'" not in error.message and "{" not in error.message


def test_an_option_the_constructor_divides_by_is_refused_in_one_error_line(vision, vision_server, capsys):
    """A patch of 0 pixels makes timm's vision transformer divide by zero while it is built: the SDK gets
    INVALID_ARGUMENT on model.options naming the option, the command line one error line."""
    model = "timm/vit_tiny_patch16_224"
    with pytest.raises(NnprobeError) as caught:
        vision.compute_receptive_field(model=model, model_options={"patch_size": 0})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["model.options"]
    assert "patch_size: ZeroDivisionError" in caught.value.message
    capsys.readouterr()
    status = main(["rf", "--model", model, "--model-option", "patch_size=0", "--address", vision_server])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert err.splitlines()[0].startswith("error: INVALID_ARGUMENT: model.options: ")


def test_options_too_big_to_build_in_time_are_stopped_naming_the_options(vision, monkeypatch):
    """A vision transformer of 100,000 blocks: its capture is stopped at the tracing limit (3 s here) with
    RESOURCE_EXHAUSTED on model.options, and the server answers the next model request."""
    from nnprobe_services.vision.receptive_fields.frontends import trace_worker

    monkeypatch.setattr(trace_worker, "CAPTURE_SECONDS", 3.0)
    with pytest.raises(NnprobeError) as caught:
        vision.compute_receptive_field(model="timm/vit_tiny_patch16_224", model_options={"depth": 100_000})
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [v.field for v in caught.value.field_violations] == ["model.options"]
    assert "took more than 3 s and was stopped; choose smaller model options" in caught.value.message
    monkeypatch.setattr(trace_worker, "CAPTURE_SECONDS", 120.0)
    result = vision.compute_receptive_field(model="timm/vit_tiny_patch16_224", model_options={"depth": 2})
    assert result.model_final_stride == 16  # the patch size


def test_options_go_with_built_in_models_only(vision):
    with pytest.raises(NnprobeError) as caught:
        vision.compute_receptive_field(onnx=LARGE, model_options={"output_stride": 8})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["model.options"]
