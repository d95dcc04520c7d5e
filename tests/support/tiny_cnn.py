"""A small CNN made in the tests, and its files as a user would upload them: ONNX, torch.export, and the
hostile kinds (pickles, TorchScript, external data pointing outside, an op without a PyTorch conversion)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

SIDE = 16
CLASSES = 5
LABELS = ("ant", "bee", "cat", "dog", "eel")
CONFIG_YAML = (
    f"task: image_classification\ninput: {{height: {SIDE}, width: {SIDE}}}\n"
    "preprocessing: {mean: [0.5, 0.25, 0.125], std: [0.5, 0.5, 0.25]}\n"
)
MEAN = np.array([0.5, 0.25, 0.125], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.5, 0.5, 0.25], dtype=np.float32).reshape(1, 3, 1, 1)
#: The network as a layer list (conv 3x3 pad 1, max pool 2x2, conv 3x3 valid): its receptive fields.
LAYERS = (("conv1", 3, 1, 1), ("pool1", 2, 2, 0), ("conv2", 3, 1, 0))


def network(seed: int = 0) -> nn.Module:
    """conv 3x3 (pad 1) → ReLU → max pool 2 → conv 3x3 → global average → flatten: (N, 3, 16, 16) → (N, 5)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, CLASSES, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    """What the config's preprocessing feeds the network: (x - mean) / std."""
    return (pixels - torch.from_numpy(MEAN)) / torch.from_numpy(STD)


def onnx_bytes(net: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.rand(2, 3, SIDE, SIDE),),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
    )
    return buffer.getvalue()


def pt2_bytes(net: nn.Module) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, (torch.rand(2, 3, SIDE, SIDE),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def torchscript_bytes(net: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)
    return buffer.getvalue()


def pickle_bytes(net: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(net, buffer)
    return buffer.getvalue()


def rewrite_zip(data: bytes, *, add: dict[str, bytes] | None = None, edit=None) -> bytes:
    """A copy of the zip ``data`` with entries added (below the root folder) and ``edit(name, bytes)``."""
    source = zipfile.ZipFile(io.BytesIO(data))
    root = source.namelist()[0].split("/", 1)[0]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            content = source.read(name)
            target.writestr(name, edit(name, content) if edit else content)
        for name, content in (add or {}).items():
            target.writestr(f"{root}/{name}", content)
    return out.getvalue()


def pickled_weights_pt2(data: bytes) -> bytes:
    def edit(name: str, content: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            config = json.loads(content)
            for meta in config["config"].values():
                meta["use_pickle"] = True
            return json.dumps(config).encode()
        return content

    return rewrite_zip(data, edit=edit)


def onnx_graph(*, op: str = "Relu", external: str | None = None) -> bytes:
    """conv 3x3 → ``op`` → global average pool → flatten, built with onnx.helper; ``external``: the conv
    weight's external-data location (nothing written there)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((CLASSES, 3, 3, 3)).astype(np.float32), "w")
    if external is not None:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", str(CLASSES * 27 * 4))):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    attributes = {"lambd": 0.1} if op == "Shrink" else {}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node(op, ["c"], ["a"], **attributes),
        helper.make_node("GlobalAveragePool", ["a"], ["g"]),
        helper.make_node("Flatten", ["g"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", CLASSES])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
