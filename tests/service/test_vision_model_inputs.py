"""Repository models whose input is NHWC or uint8 (Triton's FORMAT_NHWC, TYPE_UINT8), through the SDK: twins
of one small CNN (same weights; a Transpose, or a Cast and a scale, at the input) classify as the NCHW float
one does, an NHWC model is attacked, a uint8 one is refused gradients, and a graph whose input does not
match its declared layout or dtype is refused at upload naming the input and the config key to set."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import torch
from nnprobe import NnprobeError, VisionClient
from torch import nn

from tests.support import tiny_cnn

SIDE = tiny_cnn.SIDE
SIZE = {"height": SIDE, "width": SIDE}


class Nhwc(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))


class Uint8(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255)


def export(module: nn.Module, sample: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (sample,),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    net = tiny_cnn.network()
    root = tmp_path_factory.mktemp("inputs")
    nchw = torch.rand(2, 3, SIDE, SIDE)
    tiny_cnn.write(root / "nchw.onnx", export(net, nchw))
    tiny_cnn.write(root / "nhwc.onnx", export(Nhwc(net), nchw.permute(0, 2, 3, 1)))
    tiny_cnn.write(root / "uint8.onnx", export(Uint8(net), (nchw * 255).to(torch.uint8)))
    tiny_cnn.write(
        root / "rank3.onnx",
        export(nn.Sequential(nn.Unflatten(1, (3, SIDE)), net), nchw.reshape(2, 3 * SIDE, SIDE)),
    )
    four = nn.Sequential(nn.Conv2d(4, 3, 1), net).eval()
    tiny_cnn.write(root / "four.onnx", export(four, torch.rand(2, 4, SIDE, SIDE)))
    return root


@pytest.fixture(scope="module")
def client(module_server_factory, tmp_path_factory, folder):
    _, address = module_server_factory(
        "vision", weights_download_timeout=0, model_repository=tmp_path_factory.mktemp("repository")
    )
    with VisionClient(address, timeout=120) as vision:
        vision.upload_model(folder / "nchw.onnx", name="nchw", config={"input": SIZE})
        vision.upload_model(folder / "nhwc.onnx", name="nhwc", config={"input": {**SIZE, "layout": "nhwc"}})
        vision.upload_model(folder / "uint8.onnx", name="uint8", config={"input": {**SIZE, "dtype": "uint8"}})
        yield vision


def quantized(seed: int, count: int = 2) -> np.ndarray:
    """Pixels on the 8-bit lattice (k / 255), as (N, H, W, 3) float32."""
    levels = np.random.default_rng(seed).integers(0, 256, (count, SIDE, SIDE, 3))
    return (levels / 255).astype(np.float32)


def probabilities(client, images, model: str) -> np.ndarray:
    result = client.classify(list(images), model=model, top_k=tiny_cnn.CLASSES, skip_resize=True)
    return np.stack([[p for _, p in sorted((c.index, c.probability) for c in r.top)] for r in result])


def test_the_model_list_shows_each_inputs_layout_and_dtype(client):
    models = {m.name: m for m in client.list_models()}
    shown = {n: (models[n].input_layout, models[n].input_dtype) for n in ("nchw", "nhwc", "uint8")}
    assert shown == {"nchw": ("nchw", "float32"), "nhwc": ("nhwc", "float32"), "uint8": ("nchw", "uint8")}


def test_an_nhwc_twin_classifies_as_the_nchw_model(client):
    images = quantized(1)
    np.testing.assert_allclose(
        probabilities(client, images, "nhwc"), probabilities(client, images, "nchw"), atol=1e-6
    )


def test_a_uint8_twin_classifies_as_the_float_twin_fed_the_same_quantized_pixels(client, folder):
    import onnxruntime as ort

    images = quantized(2)
    levels = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
    float_twin = ort.InferenceSession(str(folder / "nchw.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = float_twin.run(None, {"image": levels.astype(np.float32) / 255})
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities(client, images, "uint8"), expected, atol=1e-5)
    np.testing.assert_allclose(probabilities(client, images, "nchw"), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("file", "spec", "words"),
    [
        ("nhwc.onnx", {}, ["(n, 16, 16, 3) float32", "set input.layout: nhwc"]),
        ("nchw.onnx", {"layout": "nhwc"}, ["(n, 3, 16, 16) float32", "set input.layout: nchw"]),
        ("uint8.onnx", {}, ["(n, 3, 16, 16) uint8", "set input.dtype: uint8"]),
        ("nchw.onnx", {"dtype": "uint8"}, ["(n, 3, 16, 16) float32", "set input.dtype: float32"]),
        ("rank3.onnx", {}, ["(n, 48, 16) float32", "rank-4"]),
        ("four.onnx", {}, ["(n, 4, 16, 16) float32", "3 colour channels"]),
    ],
)
def test_a_mismatched_declaration_is_refused_naming_the_input(client, folder, file, spec, words):
    with pytest.raises(NnprobeError) as refused:
        client.upload_model(folder / file, name="mismatched", config={"input": {**SIZE, **spec}})
    error = refused.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == ["metadata.config_yaml"]
    assert "input 'image'" in error.message and all(w in error.message for w in words)
    assert "ONNXRuntimeError" not in error.message
    assert "mismatched" not in {m.name for m in client.list_models()}


def test_a_forward_pass_failure_at_upload_is_one_clear_line_on_the_config(client, folder):
    config = {"input": {**SIZE, "width": SIDE - 1}, "preprocessing": {"resize": SIDE}}
    with pytest.raises(NnprobeError) as refused:
        client.upload_model(folder / "nchw.onnx", name="narrow", config=config)
    error = refused.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "set input.width: 16" in error.message
    assert [v.field for v in error.field_violations] == ["metadata.config_yaml"]


def test_an_nhwc_model_is_attacked(client):
    (result,) = client.attack(
        [quantized(3, 1)[0]], model="nhwc", method="pgd", eps=64 / 255, steps=20, step_size=0.05, top_k=2
    )
    assert result.success and result.linf <= 64 / 255 + 1e-9


def test_a_uint8_model_cannot_be_attacked(client):
    with pytest.raises(NnprobeError) as refused:
        client.attack([quantized(4, 1)[0]], model="uint8", steps=2)
    error = refused.value
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "'uint8'" in error.message and "uint8 input" in error.message
