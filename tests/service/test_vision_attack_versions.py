"""GenerateAdversarial attacks the repository version it is asked for (and transfers to the versions asked
for): two versions of a small CNN made here, each result's classes checked against onnxruntime run here on
that version's file."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import torch
from nnprobe import NnprobeError, VisionClient

from tests.support import tiny_cnn

CONFIG = {
    "input": {"height": tiny_cnn.SIDE, "width": tiny_cnn.SIDE},
    "preprocessing": {"mean": [0.5, 0.25, 0.125], "std": [0.5, 0.5, 0.25]},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("versions")
    return {
        version: tiny_cnn.write(root / f"v{version}.onnx", tiny_cnn.onnx_bytes(tiny_cnn.network(seed)))
        for version, seed in ((1, 0), (2, 1))
    }


@pytest.fixture(scope="module")
def client(module_server_factory, tmp_path_factory, files):
    _, address = module_server_factory(
        "vision",
        weights_download_timeout=0,
        model_repository=tmp_path_factory.mktemp("repository"),
        max_model_bytes=200_000,
    )
    with VisionClient(address, timeout=120) as vision:
        for version in (1, 2):
            vision.upload_model(files[version], name="tiny", config=CONFIG, labels=tiny_cnn.LABELS)
        yield vision


def _ranking(path, png: bytes) -> list[int]:
    """Class indices of the 8-bit picture ``png``, most probable first, by onnxruntime on ``path``."""
    import onnxruntime as ort
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) / 255
    x = tiny_cnn.normalised(torch.from_numpy(pixels).permute(2, 0, 1)[None]).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(np.argsort(-session.run(None, {"x": x})[0][0], kind="stable"))


def test_each_version_is_attacked_as_its_own_file_answers(client, files):
    image = np.random.default_rng(11).random((tiny_cnn.SIDE, tiny_cnn.SIDE, 3), dtype=np.float32)
    options = dict(untargeted=True, eps=32 / 255, steps=4, step_size=0.03, top_k=tiny_cnn.CLASSES)
    results = {v: client.attack([image], model="tiny", model_version=v, **options)[0] for v in (1, 2)}
    first = results[1].original_png
    assert _ranking(files[1], first) != _ranking(files[2], first)  # the versions tell apart on this image
    for version, result in results.items():
        assert [c.index for c in result.original_top] == _ranking(files[version], result.original_png)
        assert [c.index for c in result.final_top] == _ranking(files[version], result.adversarial_png)
        assert result.goal_class == _ranking(files[version], result.original_png)[0]
    default = client.attack([image], model="tiny", **options)[0]  # the default version is the newest
    assert [c.index for c in default.final_top] == [c.index for c in results[2].final_top]


def test_transfer_models_take_a_version_each(client, files):
    image = np.random.default_rng(12).random((tiny_cnn.SIDE, tiny_cnn.SIDE, 3), dtype=np.float32)
    (result,) = client.attack(
        [image],
        model="tiny",
        model_version=1,
        untargeted=True,
        steps=2,
        transfer_models=["tiny", "tiny"],
        transfer_model_versions=[1, 2],
    )
    for transfer, version in zip(result.transfers, (1, 2), strict=True):
        expected = _ranking(files[version], result.adversarial_png)[0]
        assert not transfer.error and transfer.top1.index == expected


@pytest.mark.parametrize(
    ("options", "code", "field"),
    [
        ({"model": "tiny", "model_version": 3}, grpc.StatusCode.NOT_FOUND, "model_version"),
        ({"model": "tiny", "model_version": -1}, grpc.StatusCode.INVALID_ARGUMENT, "model_version"),
        ({"model": "alexnet", "model_version": 1}, grpc.StatusCode.INVALID_ARGUMENT, "model_version"),
        (
            {"transfer_models": ["tiny"], "transfer_model_versions": [1, 2]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "transfer_model_versions",
        ),
        (
            {"transfer_models": ["tiny"], "transfer_model_versions": [9]},
            grpc.StatusCode.NOT_FOUND,
            "transfer_model_versions[0]",
        ),
        (
            {"transfer_models": ["alexnet"], "transfer_model_versions": [2]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "transfer_model_versions[0]",
        ),
    ],
)
def test_a_version_nobody_has_is_refused_naming_the_field(client, options, code, field):
    image = np.zeros((tiny_cnn.SIDE, tiny_cnn.SIDE, 3), dtype=np.float32)
    options = {"model": "tiny", **options}
    with pytest.raises(NnprobeError) as refused:
        client.attack([image], untargeted=True, steps=1, **options)
    assert refused.value.code == code
    assert [v.field for v in refused.value.field_violations] == [field]
