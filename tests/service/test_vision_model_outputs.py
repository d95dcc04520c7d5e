"""Uploads are checked for what the network returns and what config.yaml says, through the SDK: outputs that
are not one (N, classes) float tensor are refused naming what was found; a network ending in softmax declared
``output: probabilities`` classifies with its own probabilities and can be attacked; hostile config.yaml
(the nested-alias bomb, non-numbers) is INVALID_ARGUMENT naming the key, with a bounded message."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import torch
from nnprobe import NnprobeError, VisionClient
from PIL import Image
from torch import nn

from tests.support import tiny_cnn

CONFIG = {
    "input": {"height": tiny_cnn.SIDE, "width": tiny_cnn.SIDE},
    "preprocessing": {"mean": [0.5, 0.25, 0.125], "std": [0.5, 0.5, 0.25]},
}
PROBABILITIES = {**CONFIG, "output": "probabilities"}
MAX_MESSAGE = 600


def graph(tail: list, outputs: list) -> bytes:
    """conv 3x3 (5 channels) → ``tail`` nodes (input ``c``), with ``outputs`` (name, element type, shape)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((tiny_cnn.CLASSES, 3, 3, 3)).astype(np.float32), "w"
    )
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), *tail]
    made = helper.make_graph(
        nodes,
        "outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, tiny_cnn.SIDE, tiny_cnn.SIDE])],
        [
            helper.make_tensor_value_info(name, getattr(TensorProto, kind), shape)
            for name, kind, shape in outputs
        ],
        [weight],
    )
    model = helper.make_model(made, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def pooled(last: str = "logits") -> list:
    from onnx import helper

    return [
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], [last]),
    ]


def hostile_graphs() -> dict[str, bytes]:
    from onnx import TensorProto, helper

    n, k = "n", tiny_cnn.CLASSES
    return {
        "argmax": graph(
            [*pooled("l"), helper.make_node("ArgMax", ["l"], ["class"], axis=1, keepdims=1)],
            [("class", "INT64", [n, 1])],
        ),
        "integers": graph(
            [*pooled("l"), helper.make_node("Cast", ["l"], ["scores"], to=TensorProto.INT32)],
            [("scores", "INT32", [n, k])],
        ),
        "feature_map": graph([], [("c", "FLOAT", [n, k, tiny_cnn.SIDE, tiny_cnn.SIDE])]),
        "two_outputs": graph(pooled(), [("logits", "FLOAT", [n, k]), ("g", "FLOAT", [n, k, 1, 1])]),
        "one_class": graph(
            [*pooled("l"), helper.make_node("ReduceMax", ["l"], ["top"], keepdims=1)],
            [("top", "FLOAT", [n, 1])],
        ),
    }


@pytest.fixture(scope="module")
def net():
    return tiny_cnn.network()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, net):
    root = tmp_path_factory.mktemp("outputs")
    softmaxed = nn.Sequential(net, nn.Softmax(dim=1)).eval()
    tiny_cnn.write(root / "logits.onnx", tiny_cnn.onnx_bytes(net))
    tiny_cnn.write(root / "probs.onnx", tiny_cnn.onnx_bytes(softmaxed))
    tiny_cnn.write(root / "probs.pt2", tiny_cnn.pt2_bytes(softmaxed))
    for name, data in hostile_graphs().items():
        tiny_cnn.write(root / f"{name}.onnx", data)
    return root


@pytest.fixture(scope="module")
def client(module_server_factory, tmp_path_factory, folder):
    _, address = module_server_factory(
        "vision",
        weights_download_timeout=0,
        model_repository=tmp_path_factory.mktemp("repository"),
        max_model_bytes=200_000,
    )
    with VisionClient(address, timeout=120) as vision:
        vision.upload_model(folder / "logits.onnx", name="logits", config=CONFIG, labels=tiny_cnn.LABELS)
        for fmt in ("onnx", "pt2"):
            vision.upload_model(
                folder / f"probs.{fmt}", name=f"probs-{fmt}", config=PROBABILITIES, labels=tiny_cnn.LABELS
            )
        yield vision


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def expected_probabilities(net, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        return softmax(net(tiny_cnn.normalised(x)).numpy())


def refused(client, file, config=CONFIG, labels=tiny_cnn.LABELS, name="refused") -> NnprobeError:
    with pytest.raises(NnprobeError) as caught:
        client.upload_model(file, name=name, config=config, labels=labels)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(str(caught.value)) <= MAX_MESSAGE
    return caught.value


@pytest.mark.parametrize(
    ("file", "words"),
    [
        ("argmax.onnx", ["output 'class' is tensor(int64)", "ArgMax"]),
        ("integers.onnx", ["output 'scores' is tensor(int32)"]),
        ("feature_map.onnx", ["output 'c' has shape", "rank 4"]),
        ("two_outputs.onnx", ["2 outputs ('logits', 'g')"]),
        ("one_class.onnx", ["1 class(es)"]),
    ],
)
def test_outputs_that_are_not_logits_are_refused_naming_them(client, folder, file, words):
    error = refused(client, folder / file, labels=None)
    for word in words:
        assert word in str(error)
    assert file.split(".")[0] not in [m.name for m in client.list_models()]


def test_class_counts_and_declared_probabilities_are_checked(client, folder):
    assert "5 classes but 4 labels" in str(
        refused(client, folder / "logits.onnx", labels=tiny_cnn.LABELS[:4])
    )
    error = refused(client, folder / "logits.onnx", config={**CONFIG, "num_classes": 7}, labels=None)
    assert "5 classes but config num_classes 7" in str(error)
    error = refused(client, folder / "logits.onnx", config=PROBABILITIES)
    assert "declares output: probabilities" in str(error)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_a_softmax_model_classifies_with_its_own_probabilities(client, net, fmt):
    images = np.random.default_rng(7).random((3, tiny_cnn.SIDE, tiny_cnn.SIDE, 3), dtype=np.float32)
    expected = expected_probabilities(net, images)
    declared = client.classify(list(images), model=f"probs-{fmt}", top_k=5, skip_resize=True)
    twin = client.classify(list(images), model="logits", top_k=5, skip_resize=True)
    for mine, theirs, row in zip(declared, twin, expected, strict=True):
        assert [c.index for c in mine.top] == list(np.argsort(-row, kind="stable"))
        got = np.array([c.probability for c in sorted(mine.top, key=lambda c: c.index)])
        np.testing.assert_allclose(got, row, atol=1e-5)
        np.testing.assert_allclose(
            [c.probability for c in mine.top], [c.probability for c in theirs.top], atol=1e-5
        )


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_an_attack_on_a_softmax_model_succeeds(client, net, fmt):
    image = np.random.default_rng(2).random((tiny_cnn.SIDE, tiny_cnn.SIDE, 3), dtype=np.float32)
    (result,) = client.attack(
        [image], model=f"probs-{fmt}", method="pgd", eps=64 / 255, steps=20, step_size=0.05, top_k=5
    )
    assert result.success and result.linf <= 64 / 255 + 1e-9
    returned = np.asarray(Image.open(io.BytesIO(result.adversarial_png)), dtype=np.float32) / 255
    (row,) = expected_probabilities(net, returned[None])
    assert result.final_top[0].index == int(row.argmax()) != result.goal_class
    np.testing.assert_allclose(result.final_top[0].probability, row.max(), atol=1e-4)


def billion_laughs(levels: int = 9) -> str:
    items = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "input:\n  width: 1\n  height:\n" + "".join(f"    - {item}\n" for item in items)


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        (billion_laughs(), "metadata.config_yaml", "alias *a0"),
        (
            "input: {height: 16, width: 16}\npreprocessing: {mean: [a, b, c]}\n",
            "metadata.config_yaml.preprocessing.mean[0]",
            "number, got 'a'",
        ),
        (
            "input: {height: 16, width: 16}\ninput: {height: 16, width: 16}\n",
            "metadata.config_yaml",
            "repeats the key",
        ),
        (
            "input: {height: 16, width: 16, channel_order: " + "x" * 20_000 + "}\n",
            "metadata.config_yaml.input.channel_order",
            "xxx...",
        ),
        ("- a\n- b\n", "metadata.config_yaml", "mapping"),
    ],
)
def test_hostile_configs_are_invalid_argument_naming_the_key(client, folder, config, field, words):
    error = refused(client, folder / "logits.onnx", config=config, labels=None)
    assert field in str(error) and words in str(error)
