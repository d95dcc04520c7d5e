"""Receptive fields of models of the model repository, through the SDK: a small CNN made here, exported to
ONNX and torch.export and uploaded, gives the same field at every layer as the same net given as a layer
list, and ``verify`` proves the boxes; versions, sizes the program was not exported for and random weights
for the effective field are answered with clear statuses."""

from __future__ import annotations

import grpc
import pytest
from nnprobe import NnprobeError, VisionClient
from nnprobe.vision import Layer

from tests.support import tiny_cnn

CONFIG = {"input": {"height": tiny_cnn.SIDE, "width": tiny_cnn.SIDE}}
#: The layer list's names and the Sequential's module paths of the same layers.
MODULES = {"conv1": "0", "pool1": "2", "conv2": "3"}


@pytest.fixture(scope="module")
def client(module_server_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fields")
    net = tiny_cnn.network(seed=3)
    tiny_cnn.write(folder / "net.onnx", tiny_cnn.onnx_bytes(net))
    tiny_cnn.write(folder / "net.pt2", tiny_cnn.pt2_bytes(net))
    _, address = module_server_factory(
        "vision", weights_download_timeout=0, model_repository=tmp_path_factory.mktemp("repository")
    )
    with VisionClient(address, timeout=120) as vision:
        for fmt in ("onnx", "pt2"):
            vision.upload_model(folder / f"net.{fmt}", name=f"net-{fmt}", config=CONFIG)
        vision.upload_model(folder / "net.onnx", name="net-pt2")  # version 2 of net-pt2 is ONNX
        yield vision


def _layers() -> list[Layer]:
    return [
        Layer(name, kernel, stride, padding, kind="pool" if name.startswith("pool") else "conv")
        for name, kernel, stride, padding in tiny_cnn.LAYERS
    ]


def _layer_list(vision: VisionClient, size: int = tiny_cnn.SIDE):
    return vision.compute_receptive_field(_layers(), input_size=size)


@pytest.mark.parametrize(("model", "version"), [("net-onnx", 0), ("net-pt2", 1), ("net-pt2", 2)])
def test_a_repository_model_has_the_fields_of_its_layer_list_and_verify_proves_them(client, model, version):
    expected = _layer_list(client)
    result = client.compute_receptive_field(model=model, model_version=version, verify=True)
    assert result.input_size == (tiny_cnn.SIDE, tiny_cnn.SIDE)  # the model's configured size
    by_module = {layer.module: layer for layer in result.layers if layer.kind in ("conv", "pool")}
    for name, module in MODULES.items():
        want, got = expected.layer(name), by_module[module]
        for axis in ("height", "width"):
            a, b = getattr(want, axis), getattr(got, axis)
            assert (a.size, a.jump, a.receptive_size, a.start) == (b.size, b.jump, b.receptive_size, b.start)
    assert result.layer(result.end_point).height.size == expected.layer("conv2").height.size
    assert result.verified and result.units and all(u.verification.matches for u in result.units)


def test_every_unit_of_the_last_map_is_proved(client):
    side = _layer_list(client).layer("conv2").height.size
    grid = [(x, y) for x in range(side) for y in range(side)]
    reference = client.compute_receptive_field(
        _layers(), input_size=tiny_cnn.SIDE, units=[("conv2", x, y) for x, y in grid]
    )
    for model in ("net-onnx", "net-pt2"):
        result = client.compute_receptive_field(
            model=model, model_version=1, units=[("3", x, y) for x, y in grid], verify=True
        )
        assert [(u.rows, u.columns) for u in result.units] == [(u.rows, u.columns) for u in reference.units]
        assert result.verified


def test_versions_sizes_and_the_effective_field_are_refused_clearly(client):
    with pytest.raises(NnprobeError) as missing:
        client.compute_receptive_field(model="net-onnx", model_version=7)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND and "model.version" in str(missing.value)
    with pytest.raises(NnprobeError) as size:
        client.compute_receptive_field(model="net-pt2", model_version=1, input_size=32)
    assert size.value.code == grpc.StatusCode.INVALID_ARGUMENT and "input_size" in str(size.value)
    onnx = client.compute_receptive_field(model="net-onnx", input_size=32)  # ONNX reads at any size
    assert onnx.input_size == (32, 32) and onnx.layer(onnx.end_point).height.size == 14
    with pytest.raises(NnprobeError) as effective:  # a repository model has its own weights only
        client.compute_receptive_field(model="net-pt2", effective_field=True, erf_weights="random")
    assert effective.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "effective_field.weights" in str(effective.value)
